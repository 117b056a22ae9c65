"""aiohttp middleware that marks /prompt submissions made from inside the server process."""

from __future__ import annotations

import json
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .broadcasts import BroadcastRouter
from .decisions import PENDING, Bridge, Pending
from .queue_puts import QueuePutRouter
from .self_connections import SelfConnections, normalize

BRIDGE = web.AppKey("comfy_clientid_bridge.bridge", Bridge)
BROADCASTS = web.AppKey("comfy_clientid_bridge.broadcasts", BroadcastRouter)
QUEUE_PUTS = web.AppKey("comfy_clientid_bridge.queue_puts", QueuePutRouter)

# ComfyUI registers each route twice: as written and under /api (server.add_routes).
DEFAULT_PROMPT_PATHS = ("/prompt", "/api/prompt")

# Set on what we install, so a second import of the package can see it is there already.
MARKER = "__clientid_bridge__"


def clientid_bridge_middleware(
    *,
    bridge: Bridge,
    connections: SelfConnections,
    prompt_paths: Iterable[str] = DEFAULT_PROMPT_PATHS,
) -> Middleware:
    """Builds the middleware; only POSTs to `prompt_paths` are looked at, all else passes."""
    paths = frozenset(prompt_paths)
    if not paths or not all(isinstance(p, str) and p.startswith("/") for p in paths):
        raise ValueError(f"prompt_paths must be absolute paths like '/prompt', got {paths!r}")

    @web.middleware
    async def clientid_bridge(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path not in paths:
            return await handler(request)
        transport = request.transport
        if transport is None:
            return await handler(request)
        sockname = transport.get_extra_info("sockname")
        here = normalize(sockname)
        if here is not None and here[1] not in connections.ports:
            connections.watch_port(here[1])  # learn the port we actually serve on
        connection = connections.lookup(transport.get_extra_info("peername"), sockname)
        pending = Pending(connection)  # connection None: a browser, a script, a remote client
        token = PENDING.set(pending)
        try:
            response = await handler(request)
        finally:
            PENDING.reset(token)
        bridge.settle(pending, response.status, lambda: _prompt_id(response))
        return response

    setattr(clientid_bridge, MARKER, True)
    return clientid_bridge


def _prompt_id(response: web.StreamResponse) -> str | None:
    """ComfyUI answers an accepted prompt with {"prompt_id": ...}."""
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return None
    try:
        prompt_id = json.loads(body).get("prompt_id")
    except (ValueError, AttributeError):
        return None
    return prompt_id if isinstance(prompt_id, str) else None


async def status(request: web.Request) -> web.Response:
    """GET /clientid_bridge/status: counts and the last decisions, no secrets."""
    bridge = request.app.get(BRIDGE)
    if bridge is None:
        return web.json_response({"enabled": False})
    broadcasts, puts = request.app.get(BROADCASTS), request.app.get(QUEUE_PUTS)
    node_traffic = (
        {} if broadcasts is None or puts is None else {**broadcasts.status(), **puts.status()}
    )
    return web.json_response(
        {"enabled": True, "node_traffic": broadcasts is not None, **bridge.status(), **node_traffic}
    )
