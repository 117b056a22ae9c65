"""`python -m comfy_clientid_bridge batch`: queue a folder on a running ComfyUI and watch it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

LOADER = "ClientIdBridge_BatchImageLoader"
NEXT = "ClientIdBridge_BatchNext"


class BatchError(Exception):
    """A batch that could not be queued or run; the message says why."""


def prepare(workflow: dict[str, Any], folder: Path) -> tuple[dict[str, Any], str]:
    """The API-format graph with the loader pointed at `folder`; and the loader's id."""
    if "nodes" in workflow and "links" in workflow:
        raise BatchError("this is a UI workflow; save it with 'Export (API)' and pass that file")
    loaders = [
        nid
        for nid, node in workflow.items()
        if isinstance(node, dict) and node.get("class_type") == LOADER
    ]
    if len(loaders) != 1:
        raise BatchError(f"the workflow needs exactly one {LOADER} node; it has {len(loaders)}")
    graph = json.loads(json.dumps(workflow))
    graph[loaders[0]]["inputs"].update(folder=str(folder.resolve()), cursor=-1)
    return graph, loaders[0]


@dataclass
class Watch:
    """What the websocket told us about our batch so far."""

    graph: dict[str, Any]
    loader: str
    batch_id: str | None = None
    current: str = ""
    badge: str = ""
    progress: tuple[int, int] | None = None  # (done, total)
    state: str = "running"
    finished: str | None = None  # the final message, once the loop has ended
    error: str | None = None
    first_done: int | None = None
    started: float = field(default_factory=time.monotonic)

    def on_event(self, event: dict[str, Any]) -> None:
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "execution_error":
            self.error = f"{data.get('node_type')}: {data.get('exception_message', '').strip()}"
        if kind != "executed":
            return
        node, output = str(data.get("node")), data.get("output") or {}
        class_type = self.graph.get(node, {}).get("class_type")
        if class_type not in (LOADER, NEXT):
            return
        self.batch_id = (output.get("batch_id") or [self.batch_id])[0]
        self.badge = (output.get("badge") or [self.badge])[0]
        self.current = (output.get("file") or [self.current])[0]
        if len(output.get("progress") or []) == 2:
            self.progress = (int(output["progress"][0]), int(output["progress"][1]))
        self.state = (output.get("state") or [self.state])[0]
        # A loop step skipped as a duplicate is not the end of our batch; anything else is.
        if self.state not in ("running", "duplicate"):
            self.finished = self.badge

    @property
    def succeeded(self) -> bool:
        """The batch ended by itself now ("done"), or had ended before ("complete")."""
        return self.state in ("done", "complete")

    def line(self) -> str:
        if self.progress is None:
            return self.badge or "waiting for the first image..."
        done, total = self.progress
        if self.first_done is None:
            self.first_done = done  # a resumed batch: its earlier images took no time now
        rate = (done - self.first_done) / max(time.monotonic() - self.started, 1e-9)
        bar = "#" * (30 * done // max(total, 1))
        return f"[{bar:.<30}] {self.badge} · {rate:.1f} img/s · {self.current}"


async def run_batch(
    server: str, workflow: dict[str, Any], folder: Path, out: TextIO = sys.stderr
) -> int:
    """Queues the batch as its own client (so every iteration reaches us) and shows progress.

    Returns the exit status: 0 when every image was saved or skipped, 1 otherwise.
    """
    graph, loader = prepare(workflow, folder)
    watch = Watch(graph, loader)
    client_id = uuid.uuid4().hex
    url = server.rstrip("/")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            async with session.post(
                f"{url}/api/prompt", json={"prompt": graph, "client_id": client_id}
            ) as response:
                answer = await response.json()
                if response.status != 200:
                    raise BatchError(f"ComfyUI refused the workflow: {json.dumps(answer)[:500]}")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, stop.set)
            try:
                await _follow(ws, watch, stop, out)
            finally:
                loop.remove_signal_handler(signal.SIGINT)
            if stop.is_set() and watch.finished is None:
                await _stop(session, url, watch, out)
                return 130
            return await _report(session, url, watch, out)


async def _follow(
    ws: aiohttp.ClientWebSocketResponse[bool], watch: Watch, stop: asyncio.Event, out: TextIO
) -> None:
    """Redraws one line on a terminal; elsewhere (a log, CI) writes a line per change."""
    shown, terminal = "", out.isatty()
    while watch.finished is None and watch.error is None and not stop.is_set():
        try:
            message = await ws.receive(timeout=0.5)
        except asyncio.TimeoutError:
            continue
        if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            raise BatchError("ComfyUI closed the connection")
        if message.type != aiohttp.WSMsgType.TEXT:
            continue  # binary previews
        watch.on_event(json.loads(message.data))
        line = watch.line()
        if terminal:
            out.write("\r\033[K" + line)
        elif line.split(" · ")[0] != shown.split(" · ")[0]:
            out.write(line + "\n")
        shown = line
        out.flush()
    if terminal:
        out.write("\n")


async def _stop(session: aiohttp.ClientSession, url: str, watch: Watch, out: TextIO) -> None:
    if watch.batch_id is None:
        await session.post(f"{url}/api/interrupt", json={})
        out.write("interrupted before the batch started\n")
        return
    async with session.post(f"{url}/api/clientid_bridge/batch/{watch.batch_id}/stop") as response:
        status = await response.json()
    out.write(f"stopped: {status.get('progress', status)}\nrun the same command again to resume\n")


async def _report(session: aiohttp.ClientSession, url: str, watch: Watch, out: TextIO) -> int:
    if watch.error is not None:
        out.write(f"error: {watch.error}\n")
        return 1
    status: dict[str, Any] = {}
    if watch.batch_id is not None:
        async with session.get(f"{url}/api/clientid_bridge/batch/{watch.batch_id}") as response:
            status = await response.json() if response.status == 200 else {}
    counts = status.get("counts", {})
    failed = counts.get("unreadable", 0) + counts.get("failed", 0)
    out.write(f"result: {watch.finished}\n")
    if status:
        out.write(f"report: {status['report']}\n")
    return 1 if failed or not watch.succeeded else 0


def batch(server: str, workflow_file: Path, folder: Path) -> int:
    try:
        workflow = json.loads(workflow_file.read_text())
        return asyncio.run(run_batch(server, workflow, folder))
    except (BatchError, OSError, ValueError, aiohttp.ClientError) as error:
        sys.stderr.write(f"batch: {error}\n")
        return 2
