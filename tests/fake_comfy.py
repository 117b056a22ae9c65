"""A small aiohttp app that plays ComfyUI's documented PromptServer contract, and its clients.

A module, not conftest.py: tests import these helpers by name, and tests/integration has a
conftest.py of its own (two modules named `conftest` cannot both be imported)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from comfy_clientid_bridge.routing.decisions import Bridge
from comfy_clientid_bridge.routing.lineage import PromptRecord
from comfy_clientid_bridge.routing.middleware import BRIDGE, clientid_bridge_middleware, status
from comfy_clientid_bridge.routing.scope import SCOPE
from comfy_clientid_bridge.routing.self_connections import SELF_CONNECTIONS

# ComfyUI's executor thread is "Thread-N (prompt_worker)"; ours plays it.
WORKER_THREAD = "Thread-99 (prompt_worker)"
TAB_A, TAB_B = "a" * 32, "b" * 32
WORKFLOW = {"nodes": [{"id": 1}], "links": []}
SECRETS = {"api_key_comfy_org": "sk-secret-key", "auth_token_comfy_org": "tok-secret"}


@dataclass
class FakeComfy:
    """What the bridge may read of ComfyUI: open sockets and the executing prompt."""

    sockets: dict[str, object] = field(default_factory=dict)
    running: PromptRecord | None = None
    received: list[Any] = field(default_factory=list)


COMFY = web.AppKey("fake_comfy", FakeComfy)


def graph(index: int = 0, prefix: str = "tabA", mode: str = "none") -> dict[str, Any]:
    """A re-queue workflow: the loop changes `index` and the image colour."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "color": index}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        "3": {
            "class_type": "Requeue",
            "inputs": {"images": ["1", 0], "index": index, "mode": mode},
        },
    }


def running(client_id: str | None, index: int = 0, prefix: str = "tabA") -> PromptRecord:
    return PromptRecord(
        client_id=client_id,
        prompt_id=f"running-{index}",
        graph=graph(index, prefix),
        extra_pnginfo={"workflow": WORKFLOW},
    )


def create_app(comfy: FakeComfy, *, bridge_on: bool = True) -> web.Application:
    """ComfyUI's /prompt in miniature: parse, on-prompt handlers, then record and answer."""
    bridge = Bridge(
        executing=lambda: comfy.running,
        is_connected=comfy.sockets.__contains__,
        is_worker_thread=lambda name: name == WORKER_THREAD,
    )
    middlewares = [clientid_bridge_middleware(bridge=bridge, connections=SELF_CONNECTIONS)]
    app = web.Application(middlewares=middlewares if bridge_on else [])
    app[COMFY] = comfy
    if bridge_on:
        app[BRIDGE] = bridge

    async def post_prompt(request: web.Request) -> web.Response:
        json_data = await request.json()  # as ComfyUI: bad JSON is aiohttp's 500, not ours
        if bridge_on:
            json_data = bridge.on_prompt(json_data)
        comfy.received.append(json_data)
        if not isinstance(json_data, dict) or "prompt" not in json_data:
            return web.json_response({"error": "no_prompt"}, status=400)
        if "reject" in json.dumps(json_data["prompt"]):  # plays a prompt that fails validation
            return web.json_response({"error": "invalid_prompt"}, status=400)
        return web.json_response({"prompt_id": f"p{len(comfy.received)}", "number": 0})

    async def get_queue(request: web.Request) -> web.Response:
        comfy.received.append(SCOPE.get())  # what the bridge marked on a non-prompt route
        return web.json_response({"queue_running": [], "queue_pending": []})

    for prefix in ("", "/api"):
        app.router.add_post(prefix + "/prompt", post_prompt)
        app.router.add_get(prefix + "/queue", get_queue)
        app.router.add_post(prefix + "/queue", get_queue)
        app.router.add_get(prefix + "/clientid_bridge/status", status)
    return app


def bridge_of(server: TestServer) -> Bridge:
    return server.app[BRIDGE]


def comfy_of(server: TestServer) -> FakeComfy:
    return server.app[COMFY]


Answer = tuple[int, bytes]


def _post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


async def post_from_thread(
    url: str, body: Any, *, thread_name: str = WORKER_THREAD, delay: float = 0.0
) -> Answer:
    """Node code: a blocking urllib POST from a thread of this process."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Answer] = loop.create_future()

    def run() -> None:
        result = _post(url, encode(body), {"Content-Type": "application/json"})
        loop.call_soon_threadsafe(answer.set_result, result)

    thread: threading.Thread = threading.Timer(delay, run)  # a re-queue after the node returned
    thread.name, thread.daemon = thread_name, True
    thread.start()
    return await answer


OUTSIDE = """
import sys, urllib.request, urllib.error
url, origin = sys.argv[1], sys.argv[2]
headers = {"Content-Type": "application/json"}
if origin:
    headers["Origin"] = origin
req = urllib.request.Request(url, data=sys.stdin.buffer.read(), headers=headers, method="POST")
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.write(str(code) + "\\n" + body.decode("utf-8", "replace"))
"""


async def post_from_outside(url: str, body: Any, *, origin: str = "") -> Answer:
    """A browser or script: another process, so its socket is not ours."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OUTSIDE,
        url,
        origin,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    out, _ = await process.communicate(encode(body))
    code, _, rest = out.decode().partition("\n")
    return int(code), rest.encode()
