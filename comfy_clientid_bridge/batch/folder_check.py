"""Whether this server reads a folder the terminal runner lists: the runner asks before work
starts, and uploads the images to a server that cannot (README: No shared folder).

The answer says nothing about a folder outside the allowed roots (batch/folders.py) on a
server others can reach: "not allowed", whether it exists or not.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

from .folders import FolderPolicy, allowed, current_policy
from .naming import check_safe_relpath

NOT_ALLOWED = "not allowed on this server"
UNREADABLE = "missing or unreadable here"


def folder_answer(folder: str, file: str, policy: FolderPolicy) -> dict[str, object]:
    """{"readable": bool, "why": str} for `folder` (absolute) and one of its images, `file`
    (relative): the runner names a file it listed, so a same-named folder holding other
    images is not taken for the runner's."""
    path = Path(folder)
    if not folder.strip() or not path.is_absolute():
        return {"readable": False, "why": "not an absolute path"}
    try:
        probe = path / check_safe_relpath(file) if file else path
        allowed(path, setting="folder", policy=policy)
        allowed(probe, setting="folder", policy=policy)  # a symlink out of the roots too
    except ValueError:
        return {"readable": False, "why": NOT_ALLOWED}
    if not (path.is_dir() and os.access(path, os.R_OK | os.X_OK)):
        return {"readable": False, "why": UNREADABLE}
    if file and not (probe.is_file() and os.access(probe, os.R_OK)):
        return {"readable": False, "why": UNREADABLE}
    return {"readable": True, "why": ""}


async def folder_readable(request: web.Request) -> web.Response:
    """GET /clientid_bridge/folder?path=<absolute folder>&file=<one image in it>."""
    folder, file = request.query.get("path", ""), request.query.get("file", "")
    answer = await asyncio.to_thread(lambda: folder_answer(folder, file, current_policy()))
    return web.json_response(answer)
