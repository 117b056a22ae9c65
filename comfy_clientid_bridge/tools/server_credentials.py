"""Credentials per server for the runner, from a file, never from the command line (where
`ps` shows them) and never written to a log or report."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# The file's path, when --credentials is not given.
CREDENTIALS_ENV = "COMFY_CLIENTID_BRIDGE_CREDENTIALS"


class CredentialsError(Exception):
    """The credentials file cannot be used; the message names the file, never a secret."""


def headers_for(
    path: Path | None,
    urls: Sequence[str],
    environ: Mapping[str, str] = os.environ,
    normalise: Callable[[str], str] = lambda url: url.rstrip("/"),
) -> dict[str, dict[str, str]]:
    """The Authorization header of each server the file names.

    The file is JSON: {"http://host:8188": {"token": "..."}} for ComfyUI-Login's bearer
    token, {"user": "...", "password": "..."} for HTTP Basic (comfyui-basic-auth); a value
    "env:NAME" is read from that environment variable instead.
    """
    path = path or (Path(environ[CREDENTIALS_ENV]) if environ.get(CREDENTIALS_ENV) else None)
    if path is None:
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CredentialsError(f"cannot read the credentials file {path}: {error}") from None
    if not isinstance(entries, dict):
        raise CredentialsError(f"{path}: expected a JSON object of server -> credentials")
    headers = {}
    for server, entry in entries.items():
        url = normalise(server)
        if url not in urls:
            continue
        headers[url] = {"Authorization": _authorization(path, server, entry, environ)}
    return headers


def _authorization(path: Path, server: str, entry: object, environ: Mapping[str, str]) -> str:
    if not isinstance(entry, dict):
        raise CredentialsError(f"{path}: the entry for {server} is not an object")

    def value(key: str) -> str:
        raw = entry.get(key)
        if not isinstance(raw, str) or not raw:
            raise CredentialsError(f"{path}: the entry for {server} needs a string {key!r}")
        if raw.startswith("env:"):
            name = raw.removeprefix("env:")
            if not environ.get(name):
                raise CredentialsError(f"{path}: {server}'s {key} names ${name}, which is unset")
            return environ[name]
        return raw

    if "token" in entry:
        return f"Bearer {value('token')}"
    if "user" in entry:
        pair = f"{value('user')}:{value('password')}".encode()
        return f"Basic {base64.b64encode(pair).decode()}"
    raise CredentialsError(f"{path}: the entry for {server} needs 'token' or 'user'/'password'")
