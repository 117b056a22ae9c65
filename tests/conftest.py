"""The unit tier's fixtures; the stand-in for ComfyUI they serve is tests/fake_comfy.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fake_comfy import TAB_A, TAB_B, FakeComfy, create_app

from comfy_clientid_bridge.routing.self_connections import SELF_CONNECTIONS


@pytest.fixture
async def comfy_server(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> TestServer:
    server = await aiohttp_server(create_app(FakeComfy(sockets={TAB_A: object(), TAB_B: object()})))
    SELF_CONNECTIONS.watch_port(server.port or 0)
    return server
