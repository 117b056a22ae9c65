"""The package's one aiohttp middleware on POST /prompt, and the bridge's part in it.

Three parts act on a /prompt request: the credentials carrier (routing/credentials.py),
the request guard (routing/guard.py) and the bridge (below). They run in one middleware
frame, not three: each `PromptPart` may see the request before ComfyUI's handler (`enter`)
and the answer after it (the exit `enter` returns). The self-connection lookup is made once
for all of them, and they share one `PromptScope` (routing/scope.py), which their hooks
inside ComfyUI's handler read and fill. When the handler has queued a prompt, the answer
is written before the executor is woken for it (routing/answer_first.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .answer_first import answer_now
from .broadcasts import BroadcastRouter
from .decisions import Bridge
from .queue_puts import QueuePutRouter
from .scope import SCOPE, PromptScope
from .self_connections import SelfConnection, SelfConnections, normalize
from .thread_origin import ThreadTies

BRIDGE = web.AppKey("comfy_clientid_bridge.bridge", Bridge)
BROADCASTS = web.AppKey("comfy_clientid_bridge.broadcasts", BroadcastRouter)
QUEUE_PUTS = web.AppKey("comfy_clientid_bridge.queue_puts", QueuePutRouter)
THREAD_TIES = web.AppKey("comfy_clientid_bridge.thread_ties", ThreadTies)

# ComfyUI registers each route twice: as written and under /api (server.add_routes).
DEFAULT_PROMPT_PATHS = ("/prompt", "/api/prompt")

# Set on our middleware, so a second copy of the package (imported under another name) can
# see it is there already: True when the bridge is one of its parts.
MARKER = "__clientid_bridge__"

# What a part's exit is handed: the request's scope and ComfyUI's answer (None when the
# handler raised).
PartExit = Callable[[PromptScope, web.StreamResponse | None], None]


class PromptPart(Protocol):
    def enter(
        self, request: web.Request, scope: PromptScope
    ) -> tuple[web.Request, PartExit | None]:
        """Before ComfyUI's handler: the request to go on with, and what to call after."""
        ...


class Answered(Exception):
    """Raised inside ComfyUI's handler (by a hook of a part) to answer the request itself."""

    def response(self) -> web.StreamResponse:
        raise NotImplementedError


def absolute_paths(paths: Iterable[str], name: str) -> frozenset[str]:
    """The routes a middleware acts on, checked: at least one, each an absolute path."""
    checked = frozenset(paths)
    if not checked or not all(isinstance(p, str) and p.startswith("/") for p in checked):
        raise ValueError(f"{name} must be absolute paths like '/prompt', got {checked!r}")
    return checked


def self_connection(request: web.Request, connections: SelfConnections) -> SelfConnection | None:
    """The socket of this process at the other end of the request, if node code made it."""
    transport = request.transport
    if transport is None:
        return None
    sockname = transport.get_extra_info("sockname")
    here = normalize(sockname)
    if here is not None and here[1] not in connections.ports:
        connections.watch_port(here[1])  # learn the port we actually serve on
    return connections.lookup(transport.get_extra_info("peername"), sockname)


def prompt_middleware(
    *,
    parts: Sequence[PromptPart],
    connections: SelfConnections | None,
    prompt_paths: Iterable[str] = DEFAULT_PROMPT_PATHS,
) -> Middleware:
    """One middleware for every part; only POSTs to `prompt_paths` are looked at, all else
    passes. `connections` None: no part needs to know whether node code made the request."""
    paths = absolute_paths(prompt_paths, "prompt_paths")
    steps = tuple(parts)

    @web.middleware
    async def clientid_bridge(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path not in paths:
            return await handler(request)
        connection = None if connections is None else self_connection(request, connections)
        scope = PromptScope(connection)
        token = SCOPE.set(scope)
        exits: list[PartExit] = []
        response: web.StreamResponse | None = None
        try:
            for part in steps:
                request, on_exit = part.enter(request, scope)
                if on_exit is not None:
                    exits.append(on_exit)
            try:
                response = await handler(request)
            except Answered as answered:
                response = answered.response()
            if scope.wake is not None and _outermost(request, clientid_bridge):
                await answer_now(request, response)  # a prompt was queued: answer first
        finally:
            SCOPE.reset(token)
            # The exits before the wake: the credentials store reads the queue under its
            # mutex, which a woken executor would take first.
            try:
                for on_exit in reversed(exits):
                    on_exit(scope, response)
            finally:  # a part's failing exit must not leave the executor asleep
                if scope.wake is not None:
                    scope.wake()
        return response

    setattr(clientid_bridge, MARKER, any(isinstance(part, BridgePart) for part in steps))
    return clientid_bridge


def _outermost(request: web.Request, middleware: Middleware) -> bool:
    """Whether `middleware` is the app's first, with no other to see the answer after it:
    one outside it could still replace the answer, which must then not be on the wire."""
    middlewares = request.app.middlewares
    return bool(middlewares) and middlewares[0] is middleware


class BridgePart:
    """The bridge's on-prompt handler decides inside the request's scope (whether node code
    made it is there); its decision is settled once ComfyUI has answered."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def enter(self, request: web.Request, scope: PromptScope) -> tuple[web.Request, PartExit]:
        return request, self.settle

    def settle(self, scope: PromptScope, response: web.StreamResponse | None) -> None:
        if response is None:
            return
        body = _body_of(response)  # not the answer itself: the ledger may keep this a while
        self.bridge.settle(scope, response.status, lambda: _prompt_id_in(body))


def clientid_bridge_middleware(
    *,
    bridge: Bridge,
    connections: SelfConnections,
    prompt_paths: Iterable[str] = DEFAULT_PROMPT_PATHS,
) -> Middleware:
    """The bridge's part alone in the package's middleware."""
    return prompt_middleware(
        parts=[BridgePart(bridge)], connections=connections, prompt_paths=prompt_paths
    )


def _prompt_id(response: web.StreamResponse) -> str | None:
    """ComfyUI answers an accepted prompt with {"prompt_id": ...}."""
    return _prompt_id_in(_body_of(response))


def _body_of(response: web.StreamResponse) -> object:
    """The body of an answer made whole (web.Response); None for a streamed one."""
    return response.body if isinstance(response, web.Response) else None


def _prompt_id_in(body: object) -> str | None:
    if not isinstance(body, bytes):
        return None
    try:
        prompt_id = json.loads(body).get("prompt_id")
    except (ValueError, AttributeError):
        return None
    return prompt_id if isinstance(prompt_id, str) else None


async def status(request: web.Request) -> web.Response:
    """GET /clientid_bridge/status: counts and the last decisions, no secrets."""
    ties = request.app.get(THREAD_TIES)
    threads = {} if ties is None else {"threads": ties.status()}
    bridge = request.app.get(BRIDGE)
    if bridge is None:
        return web.json_response({"enabled": False, **threads})
    broadcasts, puts = request.app.get(BROADCASTS), request.app.get(QUEUE_PUTS)
    node_traffic = (
        {} if broadcasts is None or puts is None else {**broadcasts.status(), **puts.status()}
    )
    return web.json_response(
        {
            "enabled": True,
            "node_traffic": broadcasts is not None,
            **bridge.status(),
            **node_traffic,
            **threads,
        }
    )
