"""ComfyUI's cancel (POST /interrupt) stops the batch of the prompt it cut; the stop route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from comfy_clientid_bridge.batch.control import (
    CONTROL,
    BatchControl,
    batch_cancel_middleware,
    batch_status,
    stop_batch,
)
from comfy_clientid_bridge.batch.engine import BatchEngine, Source
from comfy_clientid_bridge.batch.listing import DEFAULT_PATTERNS
from comfy_clientid_bridge.batch.state import StateStore

Client = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: Client) -> TestClient[Any, Any]:
    (tmp_path / "a.png").write_bytes(b"x")
    engine = BatchEngine(
        StateStore(tmp_path / "s"), tmp_path / "o", {"running", "next"}.__contains__
    )
    source = Source(tmp_path, DEFAULT_PATTERNS, False, "natural", 0)
    engine.begin("b1", source, -1, "running", "1")
    engine.queued("b1", "next")
    control = BatchControl(engine, lambda: "running", lambda _: True, lambda: None)
    app = web.Application(middlewares=[batch_cancel_middleware(control=control)])
    app[CONTROL] = control

    async def interrupt(request: web.Request) -> web.Response:
        return web.Response(status=int(request.query.get("status", "200")))

    app.router.add_post("/interrupt", interrupt)
    app.router.add_post("/api/interrupt", interrupt)
    app.router.add_post("/api/queue", interrupt)
    app.router.add_get("/clientid_bridge/batch/{batch_id}", batch_status)
    app.router.add_post("/clientid_bridge/batch/{batch_id}/stop", stop_batch)
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    ("path", "body", "stopped"),
    [
        ("/interrupt", b"", True),
        ("/api/interrupt", b"{}", True),
        ("/api/interrupt", b'{"prompt_id": "running"}', True),
        ("/api/interrupt", b'{"prompt_id": "another"}', False),
        ("/interrupt", b"\xff not json", True),
        ("/interrupt?status=500", b"", False),
        ("/api/queue", b'{"clear": true}', True),
        ("/api/queue", b'{"delete": ["next"]}', True),
        ("/api/queue", b'{"delete": ["someone-else", 5]}', False),
        ("/api/queue", b'{"clear": false}', False),
        ("/api/queue", b"[1]", False),
    ],
    ids=[
        "plain",
        "api-empty-json",
        "targeted-ours",
        "targeted-other",
        "bad-body",
        "failed",
        "clear-queue",
        "delete-our-next",
        "delete-other",
        "no-clear",
        "queue-bad-body",
    ],
)
async def test_cancel_stops_the_running_batch(
    client: TestClient[Any, Any], path: str, body: bytes, stopped: bool
) -> None:
    response = await client.post(path, data=body)
    await response.read()
    assert client.app[CONTROL].engine.is_stopped("b1") is stopped


async def test_stop_route(client: TestClient[Any, Any]) -> None:
    response = await client.post("/clientid_bridge/batch/b1/stop")
    assert response.status == 200 and (await response.json())["stopped"] is True
    missing = await client.post("/clientid_bridge/batch/nope/stop")
    assert missing.status == 404
    status = await client.get("/clientid_bridge/batch/b1")
    assert (await status.json())["total"] == 1


def test_interrupt_paths_are_validated() -> None:
    control = BatchControl(None, lambda: None, lambda _: True, lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interrupt_paths"):
        batch_cancel_middleware(control=control, interrupt_paths=["interrupt"])
