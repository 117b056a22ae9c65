"""Where the batch nodes read and write: folders resolved against ComfyUI's own, and kept
inside the allowed roots on a server that others can reach."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import internals

# Extra roots an administrator allows, os.pathsep-separated (":" on Linux and macOS).
ROOTS_ENV = "COMFY_CLIENTID_BRIDGE_ROOTS"
# The same as a file in ComfyUI's user folder: one folder a line, '#' starts a comment.
ROOTS_FILE = Path("clientid_bridge") / "roots.txt"


@dataclass(frozen=True)
class FolderPolicy:
    """Whether folders are checked, and the roots they must lie in (resolved)."""

    enforced: bool
    roots: tuple[Path, ...]
    allow_hint: str  # the settings that would allow another folder, for the error message


def is_loopback(address: str) -> bool:
    """A `--listen` address that only this machine can reach; hostnames other than
    'localhost' count as reachable (we do not resolve names)."""
    host = address.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_roots(text: str, *, separator: str) -> list[Path]:
    """Folders from the env var (split on `separator`) or the file (one a line, '#' comments)."""
    entries = (e.split("#", 1)[0] if separator == "\n" else e for e in text.split(separator))
    return [Path(entry.strip()).expanduser() for entry in entries if entry.strip()]


def configured_roots(environ: Mapping[str, str], roots_file: Path) -> list[Path]:
    """The administrator's roots: the env var's, then the file's (a missing file is none)."""
    roots = parse_roots(environ.get(ROOTS_ENV, ""), separator=os.pathsep)
    try:
        roots += parse_roots(roots_file.read_text(encoding="utf-8"), separator="\n")
    except OSError:
        pass
    return [root for root in roots if root.is_absolute()]


def make_policy(
    *,
    listen: Iterable[str],
    comfy_folders: Iterable[Path],
    configured: list[Path],
    roots_file: Path,
) -> FolderPolicy:
    """Checked when the server is reachable beyond loopback, or when roots are configured."""
    enforced = bool(configured) or any(not is_loopback(address) for address in listen)
    # Resolved only when checked: the loader reads the policy on every image, and each
    # resolve is a system call per path part, where the executor gives up the GIL.
    folders = [*comfy_folders, *configured] if enforced else []
    roots = tuple(dict.fromkeys(folder.resolve() for folder in folders))
    hint = f"add it to {ROOTS_ENV} (separated by {os.pathsep!r}) or to {roots_file}"
    return FolderPolicy(enforced=enforced, roots=roots, allow_hint=hint)


def current_policy(environ: Mapping[str, str] = os.environ) -> FolderPolicy:
    """The policy of the running ComfyUI, read at each use: a new roots file needs no restart."""
    roots_file = internals.user_directory() / ROOTS_FILE
    return make_policy(
        listen=internals.listen_addresses(),
        comfy_folders=[
            internals.input_directory(),
            internals.output_directory(),
            internals.temp_directory(),
        ],
        configured=configured_roots(environ, roots_file),
        roots_file=roots_file,
    )


def _same_folder(path: Path, root: Path) -> bool:
    # samefile also matches a case variant on a case-insensitive file system.
    if path == root:
        return True
    try:
        return path.exists() and os.path.samefile(path, root)
    except OSError:
        return False


def is_inside(path: Path, roots: Iterable[Path]) -> bool:
    """Whether `path`, symlinks and '..' resolved, is one of `roots` or below one."""
    resolved = path.resolve()
    ancestors = [resolved, *resolved.parents]
    return any(_same_folder(ancestor, root) for root in roots for ancestor in ancestors)


def allowed(path: Path, *, setting: str, policy: FolderPolicy) -> Path:
    """`path` itself when the policy allows it; else a ValueError naming folder and fix."""
    if policy.enforced and not is_inside(path, policy.roots):
        raise ValueError(
            f"{setting} {str(path)!r} resolves to {path.resolve()}, outside the folders this "
            f"server allows (ComfyUI's input, output and temp folders and the configured "
            f"roots). To allow it, {policy.allow_hint}."
        )
    return path


def resolve_input_folder(folder: str, policy: FolderPolicy | None = None) -> Path:
    """Absolute, or relative to ComfyUI's input directory; checked against the policy."""
    path = Path(folder.strip()).expanduser()
    path = path if path.is_absolute() else internals.input_directory() / path
    return allowed(path, setting="folder", policy=policy or current_policy())


def output_base(output_folder: str, policy: FolderPolicy | None = None) -> tuple[Path, bool]:
    """Where the saver writes, resolved (its targets are, and are named relative to it), and
    whether that is ComfyUI's output folder (so /view shows it)."""
    if output_folder.strip():
        path = Path(output_folder.strip()).expanduser()
        if not path.is_absolute():
            raise ValueError(f"output_folder must be absolute (or empty); got {output_folder!r}")
        policy = policy or current_policy()
        return allowed(path, setting="output_folder", policy=policy).resolve(), False
    return internals.output_directory().resolve(), True
