"""`comfy-clientid-bridge batch`: a folder through a workflow on one or several ComfyUI servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from .batch_view import View, make_view
from .flow import FlowError, Settings, run_flow
from .flow_view import FlowView
from .http_client import client_session
from .ledger import LedgerBusy
from .server_credentials import CredentialsError, headers_for

LOADER = "ClientIdBridge_BatchImageLoader"
NEXT = "ClientIdBridge_BatchNext"
OUR_PREFIX = "ClientIdBridge_"
# Short calls (checks, queueing, stop, status); the websocket itself has no total timeout.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
# A server that stops answering pings (machine gone, cable out) counts as lost.
HEARTBEAT_SECONDS = 30.0

# Exit statuses: every shard finished without a failed image; a shard is incomplete or an
# image failed; the run could not start (nothing queued); Ctrl-C.
EXIT_OK, EXIT_INCOMPLETE, EXIT_NOT_STARTED, EXIT_INTERRUPTED = 0, 1, 2, 130


class BatchError(Exception):
    """A batch that could not be queued or run; the message says why."""


def prepare(
    workflow: dict[str, Any], folder: Path, shard: tuple[int, int] = (0, 1)
) -> tuple[dict[str, Any], str]:
    """The API-format graph with the loader pointed at `folder` (and at shard `shard` of
    `shard[1]` when the folder is split across servers); and the loader's id."""
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
    inputs = graph[loaders[0]]["inputs"]
    inputs.update(folder=str(folder.resolve()), cursor=-1)
    if shard[1] > 1:
        if int(inputs.get("shard_count", 1)) != 1:
            raise BatchError(
                "the workflow's loader is sharded already (shard_count "
                f"{inputs['shard_count']}); with several --server the runner splits the folder"
            )
        inputs.update(shard_index=shard[0], shard_count=shard[1])
    return graph, loaders[0]


def server_urls(servers: Sequence[str]) -> list[str]:
    """The servers as base URLs, in order; refuses what cannot be one and duplicates."""
    urls: list[str] = []
    for server in servers:
        url = server.strip().rstrip("/")
        if "://" not in url:
            url = f"http://{url}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BatchError(f"--server {server!r} is not an http(s) address")
        if "@" in parts.netloc:
            # Never echo it: the point is that the secret shows nowhere.
            raise BatchError(
                "a --server address holds credentials, which `ps` shows to every user of "
                "the machine; put them in a credentials file (--credentials)"
            )
        if url in urls:
            raise BatchError(f"--server {url} is given twice")
        urls.append(url)
    if not urls:
        raise BatchError("give at least one --server")
    return urls


def server_name(url: str) -> str:
    """How a server is named in lines and errors: its host:port."""
    return urlsplit(url).netloc or url


def class_types(graph: dict[str, Any]) -> list[str]:
    return sorted({str(node["class_type"]) for node in graph.values() if isinstance(node, dict)})


def missing_nodes_error(url: str, missing: Sequence[str]) -> str:
    message = f"{server_name(url)}: the workflow's nodes are missing there: {', '.join(missing)}"
    if any(name.startswith(OUR_PREFIX) for name in missing):
        message += " (is comfy-clientid-bridge installed there?)"
    return message


@dataclass
class Watch:
    """What the websocket told us about one shard's batch so far."""

    graph: dict[str, Any]
    loader: str
    batch_id: str | None = None
    current: str = ""
    badge: str = ""
    progress: tuple[int, int] | None = None  # (done, total)
    done_before: int | None = None  # done when this run first heard of it (a resume)
    state: str = "queued"
    finished: str | None = None  # the final message, once the loop has ended
    error: str | None = None
    prompt_ids: set[str] = field(default_factory=set)

    def on_event(self, event: dict[str, Any]) -> bool:
        """Reads one websocket event; True when it changed what is shown."""
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "execution_start" and data.get("prompt_id"):
            self.prompt_ids.add(str(data["prompt_id"]))
            return False
        if kind == "execution_error":
            self.error = f"{data.get('node_type')}: {data.get('exception_message', '').strip()}"
            return True
        if kind == "execution_interrupted" and data.get("prompt_id") in self.prompt_ids:
            # Cancelled on the server (a tab's cancel, a cleared queue): the batch is stopped.
            self.state, self.finished = "stopped", "interrupted on the server"
            return True
        if kind != "executed":
            return False
        return self._on_output(str(data.get("node")), data.get("output") or {})

    def _on_output(self, node: str, output: dict[str, Any]) -> bool:
        if self.graph.get(node, {}).get("class_type") not in (LOADER, NEXT):
            return False
        self.batch_id = (output.get("batch_id") or [self.batch_id])[0]
        self.badge = (output.get("badge") or [self.badge])[0]
        self.current = (output.get("file") or [self.current])[0]
        if len(output.get("progress") or []) == 2:
            self.progress = (int(output["progress"][0]), int(output["progress"][1]))
            if self.done_before is None:
                self.done_before = self.progress[0]
        self.state = (output.get("state") or [self.state])[0]
        # A loop step skipped as a duplicate is not the end of our batch; anything else is.
        if self.state not in ("running", "duplicate"):
            self.finished = self.badge
        return True

    @property
    def succeeded(self) -> bool:
        """The batch ended by itself now ("done"), or had ended before ("complete")."""
        return self.state in ("done", "complete")


@dataclass
class Shard:
    """One server's part of the folder, and how its run went."""

    url: str
    index: int
    count: int
    watch: Watch
    prompt_id: str | None = None
    lost: str | None = None  # why the connection to the server ended early
    interrupted: bool = False  # stopped by our Ctrl-C
    failed_images: int = 0
    report: str | None = None

    @property
    def name(self) -> str:
        return server_name(self.url)

    @property
    def outcome(self) -> str:
        """done, complete (before this run), stopped, lost, error, or the server's halt state."""
        if self.interrupted:
            return "stopped"
        if self.lost is not None:
            return "lost"
        if self.watch.error is not None:
            return "error"
        return self.watch.state

    @property
    def ok(self) -> bool:
        return self.outcome in ("done", "complete") and not self.failed_images

    def message(self) -> str:
        done = self.watch.progress
        at = f" at {done[0]}/{done[1]}" if done else ""
        if self.interrupted:
            return f"stopped{at}; run the same command again to resume"
        if self.lost is not None:
            return (
                f"incomplete{at}: {self.lost}; run the same command again when the server "
                "is back to finish the rest"
            )
        if self.watch.error is not None:
            return f"error{at}: {self.watch.error}"
        return self.watch.finished or self.watch.badge or self.watch.state


def exit_status(shards: Sequence[Shard]) -> int:
    if any(shard.interrupted for shard in shards):
        return EXIT_INTERRUPTED
    return EXIT_OK if all(shard.ok for shard in shards) else EXIT_INCOMPLETE


async def check_servers(
    session: aiohttp.ClientSession, urls: Sequence[str], needed: Sequence[str]
) -> None:
    """Every server answers and has every node of the workflow, or nothing is queued."""
    problems = await asyncio.gather(*(_check_server(session, url, needed) for url in urls))
    found = [problem for problem in problems if problem]
    if found:
        raise BatchError("nothing was queued:\n  " + "\n  ".join(found))


async def _check_server(
    session: aiohttp.ClientSession, url: str, needed: Sequence[str]
) -> str | None:
    try:
        known = await asyncio.gather(*(_has_node(session, url, name) for name in needed))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
        reason = str(error) or type(error).__name__
        return f"{server_name(url)}: cannot reach ComfyUI at {url} ({reason})"
    except BatchError as error:
        return str(error)
    missing = [name for name, present in zip(needed, known, strict=True) if not present]
    return missing_nodes_error(url, missing) if missing else None


async def _has_node(session: aiohttp.ClientSession, url: str, class_type: str) -> bool:
    # ComfyUI's GET /object_info/<class> answers {} for a class it does not have
    # (server.py get_object_info_node, v0.3.64 and 0.8.0).
    async with session.get(f"{url}/object_info/{class_type}") as response:
        if response.status != 200:
            raise BatchError(
                f"{server_name(url)}: {url} does not look like ComfyUI "
                f"(GET /object_info answered {response.status})"
            )
        return class_type in await response.json()


async def run_shard(
    session: aiohttp.ClientSession, shard: Shard, stop: asyncio.Event, view: View
) -> None:
    """Queues the shard as its own websocket client (so every iteration reaches it) and
    follows it until it ends, Ctrl-C, or the server goes away."""
    client_id = uuid.uuid4().hex
    try:
        async with session.ws_connect(
            f"{shard.url}/ws?clientId={client_id}", heartbeat=HEARTBEAT_SECONDS
        ) as ws:
            shard.prompt_id = await _queue(session, shard, client_id)
            view.queued(shard)
            await _follow(ws, shard, stop, view)
            if stop.is_set() and shard.watch.finished is None and shard.watch.error is None:
                shard.interrupted = True
                await _stop(session, shard)
            elif shard.watch.finished is not None:
                await _read_status(session, shard)
    except BatchError as error:
        shard.watch.error = str(error)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
        shard.lost = f"lost the connection to {shard.name} ({str(error) or type(error).__name__})"
    view.ended(shard)


async def _queue(session: aiohttp.ClientSession, shard: Shard, client_id: str) -> str:
    body = {"prompt": shard.watch.graph, "client_id": client_id}
    async with session.post(f"{shard.url}/api/prompt", json=body) as response:
        answer = await response.text()  # a refusal is JSON (400) or, from a proxy, not
    if response.status != 200:
        raise BatchError(f"{shard.name} refused the workflow: {answer[:500]}")
    return str(json.loads(answer)["prompt_id"])


async def _follow(
    ws: aiohttp.ClientWebSocketResponse[bool], shard: Shard, stop: asyncio.Event, view: View
) -> None:
    watch = shard.watch
    while watch.finished is None and watch.error is None and not stop.is_set():
        try:
            message = await ws.receive(timeout=0.5)
        except asyncio.TimeoutError:
            continue
        if message.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        ):
            raise aiohttp.ClientConnectionError("the websocket closed")
        if message.type == aiohttp.WSMsgType.TEXT and watch.on_event(json.loads(message.data)):
            view.progress(shard)


async def _stop(session: aiohttp.ClientSession, shard: Shard) -> None:
    """Ctrl-C: the batch stops where it is (its queued next prompt dropped); before the
    loader ran, our queued prompt is deleted and interrupted if it already runs."""
    if shard.watch.batch_id is not None:
        stop = f"{shard.url}/api/clientid_bridge/batch/{shard.watch.batch_id}/stop"
        async with session.post(stop) as response:
            await response.read()
        return
    if shard.prompt_id is not None:
        async with session.post(
            f"{shard.url}/api/queue", json={"delete": [shard.prompt_id]}
        ) as response:
            await response.read()
        async with session.post(
            f"{shard.url}/api/interrupt", json={"prompt_id": shard.prompt_id}
        ) as response:
            await response.read()


async def _read_status(session: aiohttp.ClientSession, shard: Shard) -> None:
    """The batch's counts and report path, from its server."""
    if shard.watch.batch_id is None:
        return
    url = f"{shard.url}/api/clientid_bridge/batch/{shard.watch.batch_id}"
    async with session.get(url) as response:
        status = await response.json() if response.status == 200 else {}
    counts = status.get("counts", {})
    shard.failed_images = int(counts.get("unreadable", 0)) + int(counts.get("failed", 0))
    shard.report = status.get("report")


async def run_batch(
    servers: str | Sequence[str],
    workflow: dict[str, Any],
    folder: Path,
    out: TextIO | None = None,
    *,
    view: View | None = None,
) -> int:
    """The folder, split into one shard per server, run on all of them at once; shown on
    `view`, else as bars or lines on `out` (stderr).

    Returns the exit status: 0 when every shard finished with every image saved or
    skipped, 1 when a shard is incomplete or an image failed, 130 after Ctrl-C.
    """
    view = make_view(as_json=False, out=out) if view is None else view
    urls = server_urls([servers] if isinstance(servers, str) else servers)
    shards = []
    for index, url in enumerate(urls):
        graph, loader = prepare(workflow, folder, (index, len(urls)))
        shards.append(Shard(url, index, len(urls), Watch(graph, loader)))
    async with client_session(urls, REQUEST_TIMEOUT) as session:
        await check_servers(session, urls, class_types(shards[0].watch.graph))
        view.started(shards)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        try:
            await asyncio.gather(*(run_shard(session, shard, stop, view) for shard in shards))
        finally:
            loop.remove_signal_handler(signal.SIGINT)
    status = exit_status(shards)
    view.summary(shards, status)
    return status


def batch(
    servers: Sequence[str],
    workflow_file: Path,
    folder: Path,
    *,
    as_json: bool = False,
    static: bool = False,
    settings: Settings | None = None,
    credentials: Path | None = None,
) -> int:
    """The folder through the workflow: flowing over the servers (one prompt per image), or
    with `static` as the servers' own loops over one shard each."""
    settings = settings or Settings()
    if static and (settings.upload or settings.download is not None):
        make_view(as_json=as_json).error("--upload and --download need the runner without --static")
        return EXIT_NOT_STARTED
    if not static:
        return flowing_batch(
            servers,
            workflow_file,
            folder,
            as_json=as_json,
            settings=settings,
            credentials=credentials,
        )
    view = make_view(as_json=as_json)
    try:
        workflow = json.loads(workflow_file.read_text())
        return asyncio.run(run_batch(servers, workflow, folder, view=view))
    except (BatchError, OSError, ValueError, aiohttp.ClientError) as error:
        view.error(str(error))
        return EXIT_NOT_STARTED
    except KeyboardInterrupt:  # before the run began: nothing was queued
        view.error("interrupted; nothing was queued")
        return EXIT_INTERRUPTED
    finally:
        view.close()


def flowing_batch(
    servers: Sequence[str],
    workflow_file: Path,
    folder: Path,
    *,
    as_json: bool,
    settings: Settings,
    credentials: Path | None,
) -> int:
    view = FlowView(data=sys.stdout if as_json else None)
    try:
        urls = server_urls(servers)
        graph, loader = prepare(json.loads(workflow_file.read_text()), folder)
        if settings.download is not None:
            settings = replace(settings, download=settings.download.resolve())
        headers = headers_for(credentials, urls, normalise=lambda url: server_urls([url])[0])
        return asyncio.run(
            run_flow(urls, graph, loader, folder, settings, view, headers, os.environ)
        )
    except (
        BatchError,
        FlowError,
        CredentialsError,
        LedgerBusy,
        OSError,
        ValueError,
        aiohttp.ClientError,
    ) as error:
        view.error(str(error))
        return EXIT_NOT_STARTED
    except KeyboardInterrupt:
        view.error("interrupted before the run began")
        return EXIT_INTERRUPTED
    finally:
        view.close()
