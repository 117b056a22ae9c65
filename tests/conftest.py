"""The unit tier's fixtures; the stand-in for ComfyUI they serve is tests/fake_comfy.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fake_comfy import TAB_A, TAB_B, FakeComfy, create_app

from comfy_clientid_bridge.routing import thread_origin
from comfy_clientid_bridge.routing.self_connections import SELF_CONNECTIONS


@pytest.fixture
async def comfy_server(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> TestServer:
    server = await aiohttp_server(create_app(FakeComfy(sockets={TAB_A: object(), TAB_B: object()})))
    SELF_CONNECTIONS.watch_port(server.port or 0)
    return server


@pytest.fixture(autouse=True)
def thread_ties_put_back() -> Iterator[None]:
    """A test that installs the package (register._install) makes its ties the process's;
    the next test starts with the ties it found, not with a stand-in server's."""
    ties = thread_origin._ties
    yield
    thread_origin._ties = ties
