"""GET /view of an image the save worker has not written yet waits until it is on disk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..routing.middleware import absolute_paths

DEFAULT_VIEW_PATHS = ("/view", "/api/view")
# The saver's executed event names its files before the worker has written them; the tab
# asks for them at once. A few tens of ms per image, polled: no thread hands the loop a wake.
POLL_SECONDS = 0.02
DEFAULT_WAIT_SECONDS = 30.0


def pending_view_middleware(
    *,
    viewed_file: Callable[[Mapping[str, str]], Path | None],
    is_pending: Callable[[Path], bool],
    any_pending: Callable[[], bool],
    view_paths: Iterable[str] = DEFAULT_VIEW_PATHS,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
) -> Middleware:
    """Holds a GET of `view_paths` while the file it names (`viewed_file` of its query) is
    still being saved, `wait_seconds` at most; then ComfyUI answers it as always."""
    paths = absolute_paths(view_paths, "view_paths")
    if not wait_seconds > 0:
        raise ValueError(f"wait_seconds must be positive; got {wait_seconds!r}")

    @web.middleware
    async def wait_for_pending_view(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "GET" and request.path in paths and any_pending():
            file = viewed_file(request.query)
            deadline = time.monotonic() + wait_seconds
            while file is not None and is_pending(file) and time.monotonic() < deadline:
                await asyncio.sleep(POLL_SECONDS)
        return await handler(request)

    return wait_for_pending_view
