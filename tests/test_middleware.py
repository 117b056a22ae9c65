"""The package's one middleware on POST /prompt: its parts, in order, around ComfyUI's handler."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from comfy_clientid_bridge.routing.middleware import (
    MARKER,
    Answered,
    BridgePart,
    PartExit,
    _prompt_id,
    clientid_bridge_middleware,
    prompt_middleware,
)
from comfy_clientid_bridge.routing.scope import SCOPE, PromptScope
from comfy_clientid_bridge.routing.self_connections import SelfConnection, SelfConnections

Client = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
SEEN = web.AppKey("seen", list)


class Recorder:
    """A part that logs its enter and what its exit was handed."""

    def __init__(self, name: str, log: list[Any], *, exits: bool = True) -> None:
        self.name, self.log, self.exits = name, log, exits

    def enter(
        self, request: web.Request, scope: PromptScope
    ) -> tuple[web.Request, PartExit | None]:
        self.log.append(("enter", self.name, scope.connection))
        if not self.exits:
            return request, None
        return request, lambda _, response: self.log.append(
            ("exit", self.name, None if response is None else response.status)
        )


class Teapot(Answered):
    def response(self) -> web.StreamResponse:
        return web.json_response({"answered": "by a part"}, status=418)


class CountingConnections(SelfConnections):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def lookup(self, peername: object, sockname: object) -> SelfConnection | None:
        self.lookups += 1
        return super().lookup(peername, sockname)


def app_with(parts: list[Any], behaviour: str = "ok", connections: Any = None) -> web.Application:
    app = web.Application(middlewares=[prompt_middleware(parts=parts, connections=connections)])
    app[SEEN] = []

    async def post_prompt(request: web.Request) -> web.Response:
        app[SEEN].append(SCOPE.get())
        if behaviour == "answered":
            raise Teapot()
        if behaviour == "crash":
            raise RuntimeError("core crashed")
        return web.json_response({"prompt_id": "p1"})

    app.router.add_post("/prompt", post_prompt)
    app.router.add_post("/queue", post_prompt)
    app.router.add_get("/prompt", post_prompt)
    return app


async def test_parts_enter_in_order_and_exit_in_reverse_with_the_answer(
    aiohttp_client: Client,
) -> None:
    log: list[Any] = []
    parts = [Recorder("a", log), Recorder("b", log, exits=False), Recorder("c", log)]
    client = await aiohttp_client(app_with(parts))
    assert (await client.post("/prompt", json={})).status == 200
    assert log == [
        ("enter", "a", None),
        ("enter", "b", None),
        ("enter", "c", None),
        ("exit", "c", 200),
        ("exit", "a", 200),
    ]


async def test_an_answered_exception_becomes_the_answer_every_exit_sees(
    aiohttp_client: Client,
) -> None:
    log: list[Any] = []
    client = await aiohttp_client(app_with([Recorder("a", log)], "answered"))
    answer = await client.post("/prompt", json={})
    assert (answer.status, await answer.json()) == (418, {"answered": "by a part"})
    assert log[-1] == ("exit", "a", 418)


async def test_a_crash_in_core_reaches_the_exits_as_no_answer_and_propagates(
    aiohttp_client: Client,
) -> None:
    log: list[Any] = []
    client = await aiohttp_client(app_with([Recorder("a", log)], "crash"))
    assert (await client.post("/prompt", json={})).status == 500  # aiohttp's, as without us
    assert log[-1] == ("exit", "a", None)


async def test_a_failing_enter_still_runs_the_exits_of_the_parts_before_it(
    aiohttp_client: Client,
) -> None:
    log: list[Any] = []

    class Broken:
        def enter(self, request: web.Request, connection: Any) -> Any:
            raise RuntimeError("broken part")

    client = await aiohttp_client(app_with([Recorder("a", log), Broken()]))
    assert (await client.post("/prompt", json={})).status == 500
    assert log == [("enter", "a", None), ("exit", "a", None)]


@pytest.mark.parametrize(("method", "path"), [("GET", "/prompt"), ("POST", "/queue")])
async def test_other_methods_and_paths_meet_no_part(
    aiohttp_client: Client, method: str, path: str
) -> None:
    log: list[Any] = []
    client = await aiohttp_client(app_with([Recorder("a", log)]))
    assert (await client.request(method, path, json={})).status == 200
    assert log == []


async def test_the_self_connection_is_looked_up_once_for_all_parts(
    aiohttp_client: Client,
) -> None:
    log: list[Any] = []
    connections = CountingConnections()
    parts = [Recorder("a", log), Recorder("b", log)]
    client = await aiohttp_client(app_with(parts, connections=connections))
    await client.post("/prompt", json={})
    assert connections.lookups == 1
    assert client.port in connections.ports  # the port served on is learnt


async def test_the_bridge_part_settles_in_the_request_s_scope_and_closes_it(
    aiohttp_client: Client,
) -> None:
    settled: list[Any] = []

    class Bridge:
        def settle(self, scope: Any, status: int, prompt_id_of: Any) -> None:
            settled.append((scope, status, prompt_id_of()))

    app = app_with([BridgePart(Bridge())])  # type: ignore[arg-type]
    client = await aiohttp_client(app)
    await client.post("/prompt", json={})
    (scope,) = app[SEEN]
    assert isinstance(scope, PromptScope) and scope.connection is None  # not node code's
    assert settled == [(scope, 200, "p1")]
    assert SCOPE.get() is None


def test_what_the_bridge_keeps_to_read_the_prompt_id_is_not_the_answer() -> None:
    """The ledger holds a tab's prompt_id_of for up to 128 prompts: it must not hold the
    answer object (its headers, its writer) alive, only the bytes it read the id from."""
    kept: list[Any] = []

    class Bridge:
        def settle(self, scope: Any, status: int, prompt_id_of: Any) -> None:
            kept.append(prompt_id_of)

    response = web.json_response({"prompt_id": "p7", "number": 1})
    answer = weakref.ref(response)
    BridgePart(Bridge()).settle(PromptScope(), response)  # type: ignore[arg-type]
    del response
    gc.collect()
    assert answer() is None
    assert kept[0]() == "p7"


def test_a_streamed_answer_settles_with_no_prompt_id() -> None:
    """A StreamResponse (a pack's handler may answer with one) has no body to read."""
    settled: list[Any] = []

    class Bridge:
        def settle(self, scope: Any, status: int, prompt_id_of: Any) -> None:
            settled.append((status, prompt_id_of()))

    BridgePart(Bridge()).settle(PromptScope(), web.StreamResponse(status=200))  # type: ignore[arg-type]
    assert settled == [(200, None)]


def test_no_answer_settles_nothing() -> None:
    settled: list[Any] = []

    class Bridge:
        def settle(self, *args: Any) -> None:
            settled.append(args)

    BridgePart(Bridge()).settle(PromptScope(), None)  # type: ignore[arg-type]
    assert settled == []


def test_the_marker_says_whether_the_bridge_is_a_part() -> None:
    bridge_part = BridgePart(object())  # type: ignore[arg-type]
    assert getattr(prompt_middleware(parts=[bridge_part], connections=None), MARKER) is True
    assert getattr(prompt_middleware(parts=[Recorder("a", [])], connections=None), MARKER) is False


@pytest.mark.parametrize("paths", [(), ("prompt",), (1,)], ids=["none", "relative", "not-str"])
def test_bad_paths_are_refused(paths: Any) -> None:
    with pytest.raises(ValueError, match="absolute paths"):
        prompt_middleware(parts=[], connections=None, prompt_paths=paths)


def test_the_error_names_the_argument() -> None:
    with pytest.raises(ValueError, match="^prompt_paths must be absolute paths"):
        prompt_middleware(parts=[], connections=None, prompt_paths=["prompt"])


async def test_a_socket_without_an_inet_address_is_nobody_s() -> None:
    """A transport that cannot name its address (a Unix socket): no lookup, no crash."""
    seen: list[Any] = []
    log: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"prompt_id": "p1"})

    transport = SimpleNamespace(get_extra_info=lambda name: None)
    request = make_mocked_request("POST", "/prompt", transport=transport)
    middleware = prompt_middleware(parts=[Recorder("a", log)], connections=SelfConnections())
    seen.append(await middleware(request, handler))
    assert log[0] == ("enter", "a", None) and seen[0].status == 200


async def test_the_bridge_alone_honours_its_paths(aiohttp_client: Client) -> None:
    settled: list[Any] = []

    class Bridge:
        def settle(self, pending: Any, status: int, prompt_id_of: Any) -> None:
            settled.append(status)

    middleware = clientid_bridge_middleware(
        bridge=Bridge(),  # type: ignore[arg-type]
        connections=SelfConnections(),
        prompt_paths=["/custom"],
    )
    app = web.Application(middlewares=[middleware])

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_post("/custom", answer)
    app.router.add_post("/prompt", answer)
    client = await aiohttp_client(app)
    await client.post("/prompt", json={})
    assert settled == []
    await client.post("/custom", json={})
    assert settled == [200]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (web.json_response({"prompt_id": "p1"}), "p1"),
        (web.json_response({"prompt_id": 5}), None),
        (web.json_response(["p1"]), None),
        (web.Response(body=b"not json"), None),
        (web.StreamResponse(), None),
    ],
    ids=["id", "id-not-a-string", "not-an-object", "not-json", "streamed"],
)
def test_the_prompt_id_is_read_only_from_core_s_answer_shape(
    response: web.StreamResponse, expected: str | None
) -> None:
    assert _prompt_id(response) == expected
