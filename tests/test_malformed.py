"""Bad input reaches ComfyUI's own handling unchanged: same status, same parsed body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fake_comfy import (
    TAB_A,
    FakeComfy,
    create_app,
    graph,
    post_from_outside,
    post_from_thread,
    running,
)

from comfy_clientid_bridge.routing.self_connections import SELF_CONNECTIONS

BODIES: list[tuple[str, Any]] = [
    ("bad-json", b"{not json"),
    ("empty", b""),
    ("non-utf8", b'{"prompt": "\xff\xfe"}'),
    ("json-list", [1, 2, 3]),
    ("json-string", "prompt"),
    ("json-null", None),
    ("no-prompt", {"client_id": TAB_A}),
    ("prompt-is-list", {"prompt": [1]}),
    ("prompt-is-string", {"prompt": "x"}),
    ("client-id-int", {"prompt": graph(1), "client_id": 7}),
    ("client-id-dict", {"prompt": graph(1), "client_id": {"a": 1}}),
    ("extra-data-list", {"prompt": graph(1), "extra_data": [1]}),
    ("extra-data-string", {"prompt": graph(1), "extra_data": "x"}),
    ("pnginfo-string", {"prompt": graph(1), "extra_data": {"extra_pnginfo": "x"}}),
    ("nodes-not-dicts", {"prompt": {"1": 5, "2": [1], "3": None}}),
    ("unicode-ids", {"prompt": {"ノード": {"class_type": "✓", "inputs": {"ü": "ß"}}}}),
    ("deeply-nested", {"prompt": {"1": {"class_type": "X", "inputs": {"v": [[[[[[[[1]]]]]]]]}}}}),
    ("huge", {"prompt": graph(1), "pad": "x" * 2_000_000}),
]

Factory = Callable[[web.Application], Awaitable[TestServer]]


async def answer_and_received(
    aiohttp_server: Factory, bridge_on: bool, who: str, body: Any
) -> tuple[int, list[Any]]:
    comfy = FakeComfy(sockets={TAB_A: object()}, running=running(None))
    server = await aiohttp_server(create_app(comfy, bridge_on=bridge_on))
    SELF_CONNECTIONS.watch_port(server.port or 0)
    url = str(server.make_url("/prompt"))
    post = post_from_thread if who == "node" else post_from_outside
    status, _ = await post(url, body)
    return status, comfy.received


@pytest.mark.parametrize("who", ["node", "outside"])
@pytest.mark.parametrize("body", [b for _, b in BODIES], ids=[i for i, _ in BODIES])
async def test_bad_input_is_answered_as_without_the_bridge(
    aiohttp_server: Factory, who: str, body: Any, caplog: pytest.LogCaptureFixture
) -> None:
    without = await answer_and_received(aiohttp_server, False, who, body)
    with_bridge = await answer_and_received(aiohttp_server, True, who, body)
    assert with_bridge == without
    ours = [r for r in caplog.records if r.name.startswith("comfy_clientid_bridge")]
    assert not [r for r in ours if r.exc_info or "Traceback" in r.getMessage()]


async def test_other_routes_and_methods_pass_through(aiohttp_server: Factory) -> None:
    comfy = FakeComfy(running=running(TAB_A))
    server = await aiohttp_server(create_app(comfy))
    SELF_CONNECTIONS.watch_port(server.port or 0)
    status, _ = await post_from_thread(str(server.make_url("/queue")), {"clear": True})
    assert status == 200
    assert comfy.received == [None]
