"""The terminal runner's uploads on a server: one subfolder of ComfyUI's input per batch,
and the route that removes it (ComfyUI has no route that deletes an input)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from pathlib import Path

from aiohttp import web

from .. import internals
from .runner_routes import UPLOAD_ROOT

# A batch key is 16 hex digits (tools/flow.py batch_key): nothing else can be named.
_KEY = re.compile(r"[0-9a-f]{16}")


def uploads_folder(input_directory: Path, key: str) -> Path:
    """The batch's upload folder; ValueError for anything but a batch key."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"not a batch key: {key!r}")
    return input_directory / UPLOAD_ROOT / key


async def remove_uploads(request: web.Request) -> web.Response:
    """DELETE /clientid_bridge/uploads/{key}: the batch's uploads, gone (200 also when
    there were none: the runner asks once per server at the end)."""
    try:
        folder = uploads_folder(internals.input_directory(), request.match_info["key"])
    except ValueError as error:
        return web.json_response({"error": str(error)}, status=400)
    await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # the root too, once no batch has uploads there
        folder.parent.rmdir()
    return web.json_response({"removed": not folder.exists()})
