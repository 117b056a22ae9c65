"""`batch` over several servers as work that flows: one prompt per image, each server fed
while it is idle, its images moved when it dies, the progress kept in a SQLite ledger.

The runner is a websocket client of every server (one client id per server, kept in the
ledger, so a restarted runner hears the prompts it queued before), and queues each image as
its own prompt: the workflow's loader pinned to that file (its `file` input), Batch Next
left out. tools/schedule.py decides who gets what; this module does the talking.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp

from ..batch.engine import CURSOR_INPUT, ONE_FILE_INPUT, Source
from ..batch.listing import parse_patterns
from ..batch.naming import atomic_write_bytes, check_safe_relpath
from ..batch.runner_routes import FOLDER_PATH, UPLOAD_ROOT, UPLOADS_PATH
from .flow_view import FlowView
from .http_client import client_session
from .ledger import Ledger, write_report_file
from .schedule import DEPTH, LOST_AFTER, STALL_FLOOR, Lease, Scheduler

logger = logging.getLogger(__name__)

LOADER = "ClientIdBridge_BatchImageLoader"
NEXT = "ClientIdBridge_BatchNext"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)
# Pings every 5 s: a server that stops answering (machine gone, process stopped) is seen
# gone after 7.5 s (aiohttp closes the socket when a pong is half a heartbeat late).
HEARTBEAT = 5.0
# With no server able to take work for this long, the run ends (exit 1) instead of waiting.
GIVE_UP = 120.0
# Between connection attempts, then 2 s each: a server back (or late) gets work soon, and a
# refused connection costs next to nothing.
RETRY_SECONDS = (0.5, 1.0, 2.0)
# How an image finished while nobody listened (runner killed, connection lost) is noted.
HISTORY_NOTE = "found in the server's history"
# The longest a finished image waits in memory before its ledger row is committed.
FLUSH_SECONDS = 0.05

EXIT_OK, EXIT_INCOMPLETE, EXIT_NOT_STARTED, EXIT_INTERRUPTED = 0, 1, 2, 130


class FlowError(Exception):
    """A run that could not start; the message says why."""


@dataclass(frozen=True)
class Settings:
    upload: bool = False
    download: Path | None = None
    ledger: Path | None = None
    report: Path | None = None
    depth: int = DEPTH
    lost_after: float = LOST_AFTER
    stall_floor: float = STALL_FLOOR
    give_up: float = GIVE_UP


@dataclass
class Endpoint:
    """One server as the runner talks to it."""

    url: str
    name: str
    headers: Mapping[str, str]
    client_id: str
    folder: str  # the loader's folder there: the shared one, or the batch's uploads
    upload: bool | None = None  # whether it gets uploads; None: not asked yet
    checked: bool = False  # checked by the preflight: its first connection skips the checks
    ready: bool = False  # connected and checked
    broken: str | None = None  # why it can never take work (its nodes are missing)
    attempts: dict[str, int] = field(default_factory=dict)  # prompt id -> attempt
    outputs: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    loader_state: dict[int, str] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)
    leftovers: list[tuple[int, int, str]] = field(default_factory=list)  # image, attempt, pid
    uploaded: bool = False
    ws: aiohttp.ClientWebSocketResponse[bool] | None = None


def batch_key(graph: Mapping[str, Any], loader: str, folder: Path) -> str:
    """What names a batch's ledger: the folder and the workflow (servers aside, so the
    same command with other servers resumes it)."""
    canonical = {
        node_id: node
        for node_id, node in graph.items()
        if not (isinstance(node, dict) and node.get("class_type") == NEXT)
    }
    canonical = json.loads(json.dumps(canonical))
    for name in ("folder", CURSOR_INPUT, ONE_FILE_INPUT):
        canonical[loader]["inputs"].pop(name, None)
    text = json.dumps([str(folder.resolve()), canonical], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def one_image_graph(template: Mapping[str, Any], loader: str, folder: str, source: str) -> Any:
    """The graph of one image's prompt: the loader pinned to `source`, no Batch Next."""
    graph = {
        node_id: node
        for node_id, node in template.items()
        if not (isinstance(node, dict) and node.get("class_type") == NEXT)
    }
    graph[loader] = {
        **template[loader],
        "inputs": {
            **template[loader]["inputs"],
            "folder": folder,
            ONE_FILE_INPUT: source,
            CURSOR_INPUT: -1,
        },
    }
    return graph


def output_images(outputs: Mapping[str, Any]) -> list[dict[str, str]]:
    """The saved images (type "output") among a prompt's node outputs."""
    found = []
    for output in outputs.values():
        for image in (output or {}).get("images") or []:
            if isinstance(image, dict) and image.get("type") == "output":
                found.append({key: str(image.get(key, "")) for key in ("filename", "subfolder")})
    return found


def local_path(download: Path, source: str, image: Mapping[str, str]) -> Path:
    """Where a downloaded output goes: the download folder, the source's own subfolders."""
    parent = PurePosixPath(source).parent
    name = check_safe_relpath(image["filename"]).name
    return download / check_safe_relpath(parent / name) if str(parent) != "." else download / name


class Runner:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        ledger: Ledger,
        endpoints: Sequence[Endpoint],
        template: Mapping[str, Any],
        loader: str,
        folder: Path,
        key: str,
        settings: Settings,
        view: FlowView,
        clock: Any = time.monotonic,
        probe: str = "",
    ) -> None:
        self.probe = probe  # one image of the listing: asked about with the folder
        self.session, self.ledger, self.template, self.loader = session, ledger, template, loader
        self.folder, self.key, self.settings, self.view, self.clock = (
            folder,
            key,
            settings,
            view,
            clock,
        )
        self.endpoints = {endpoint.url: endpoint for endpoint in endpoints}
        self.plan = Scheduler(
            ledger.todo(),
            clock=clock,
            depth=settings.depth,
            lost_after=settings.lost_after,
            stall_floor=settings.stall_floor,
            first_attempt=ledger.max_attempt() + 1,
        )
        self.wake = asyncio.Event()
        self.stop = asyncio.Event()
        self.duplicates: list[str] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.started = clock()
        self._recorded_moves: set[int] = set()  # indices into plan.moves in the ledger
        self.finishing = 0  # accepted images being downloaded and recorded
        self._flushed = clock()
        self._assign_leftovers()

    def _assign_leftovers(self) -> None:
        """Images a server had when the last run ended: asked about when it answers."""
        for row in self.ledger.leased():
            endpoint = self.endpoints.get(row.server or "")
            if endpoint is None or row.prompt_id is None or row.attempt is None:
                self.ledger.returned(row.idx)
                self.plan.pending.appendleft(row.idx)
            else:
                endpoint.leftovers.append((row.idx, row.attempt, row.prompt_id))

    # --- the run ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._interrupt)
        try:
            for endpoint in self.endpoints.values():
                self._spawn(self._serve(endpoint))
            status = await self._dispatch()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if status == EXIT_INTERRUPTED:
            await self._drop_waiting()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if status != EXIT_INTERRUPTED:
            await self._remove_uploads()
        return status

    def _interrupt(self) -> None:
        """Ctrl-C: the dispatcher stops now (not at its next half-second tick)."""
        self.stop.set()
        self.wake.set()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._done_task)

    def _done_task(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("runner task failed", exc_info=task.exception())
            self.view.error(f"internal error: {task.exception()!r}")
            self._interrupt()

    async def _dispatch(self) -> int:
        idle_since: float | None = None
        while not self.stop.is_set():
            self._expire()
            leases = self.plan.assign()
            for lease in leases:
                self._submit(lease)
            # Every lease is on disk before its prompt is sent (the tasks run at the next
            # await): a runner killed then knows which server may have the image. Finishes
            # are committed with it, at most FLUSH_SECONDS late; one lost to a kill is found
            # in the server's history by the next run.
            if leases or self.clock() - self._flushed > FLUSH_SECONDS:
                self.ledger.flush()
                self._flushed = self.clock()
            leftovers = any(endpoint.leftovers for endpoint in self.endpoints.values())
            if self.plan.finished_all and not leftovers and not self.finishing:
                return EXIT_OK if not self.plan.failed else EXIT_INCOMPLETE
            if self.plan.live():
                idle_since = None
            elif idle_since is None:
                idle_since = self.clock()
            elif self.clock() - idle_since > self.settings.give_up:
                self.view.error(f"no server has answered for {self.settings.give_up:.0f} s")
                return EXIT_INCOMPLETE
            self.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                timeout = FLUSH_SECONDS if self.ledger.unflushed else 0.5
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)
        return EXIT_INTERRUPTED

    def _expire(self) -> None:
        for lease in self.plan.expire():
            if lease.image in self.plan.done:
                continue
            self.ledger.returned(lease.image)
            self.view.taken_back(self.ledger.source(lease.image), lease.server)
            self._spawn(self._cancel(self.endpoints[lease.server], lease))
        for number, move in enumerate(self.plan.moves):
            if move.to is not None and number not in self._recorded_moves:
                self._recorded_moves.add(number)
                text = f"{host(move.source)} -> {host(move.to)} ({move.reason})"
                self.ledger.moved(move.image, text)
        if self.clock() - self.started > self.settings.lost_after:
            for endpoint in self.endpoints.values():
                if not endpoint.ready and endpoint.leftovers:
                    self._return_leftovers(endpoint)

    def _return_leftovers(self, endpoint: Endpoint) -> None:
        for image, _, _ in endpoint.leftovers:
            self.ledger.returned(image)
            self.plan.pending.appendleft(image)
        endpoint.leftovers.clear()

    # --- one server ------------------------------------------------------------------------

    async def _serve(self, endpoint: Endpoint) -> None:
        """Connects (again and again), hears the server's events, reconciles after a gap."""
        failures = 0
        while endpoint.broken is None:
            try:
                async with self.session.ws_connect(
                    f"{endpoint.url}/ws?clientId={endpoint.client_id}",
                    headers=endpoint.headers,
                    heartbeat=HEARTBEAT,
                ) as ws:
                    failures, endpoint.ws = 0, ws
                    await self._connected(endpoint)
                    if endpoint.broken is not None:
                        break
                    await self._listen(endpoint, ws)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                if endpoint.ready:
                    logger.info("%s: %s", endpoint.name, error)
            endpoint.ws, endpoint.checked = None, False  # the next connection checks again
            if endpoint.ready:
                endpoint.ready = False
                self.plan.server_down(endpoint.url)
                self.view.server(endpoint.name, "lost")
            self.wake.set()
            await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
            failures += 1

    async def _connected(self, endpoint: Endpoint) -> None:
        # The preflight's check stands for the first connection (it was made a moment ago);
        # a connection after a gap is checked again (the server may have restarted).
        missing = [] if endpoint.checked else await self._check(endpoint)
        endpoint.checked = False
        if missing:
            endpoint.broken = f"the workflow's nodes are missing there: {', '.join(missing)}"
            self.view.server(endpoint.name, "refused", endpoint.broken)
            return
        await self._reconcile(endpoint)
        endpoint.ready = True
        self.plan.server_up(endpoint.url)
        self.view.server(endpoint.name, "up")
        self.wake.set()

    async def _check(self, endpoint: Endpoint) -> list[str]:
        missing, _ = await asyncio.gather(
            missing_nodes(self.session, endpoint, self.template),
            decide_upload(self.session, endpoint, self.folder, self.probe, self.key, self.view),
        )
        return missing

    async def _listen(self, endpoint: Endpoint, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await self._on_event(endpoint, json.loads(message.data))
            elif message.type == aiohttp.WSMsgType.ERROR:
                break

    async def _on_event(self, endpoint: Endpoint, event: Mapping[str, Any]) -> None:
        kind, data = event.get("type"), event.get("data") or {}
        attempt = endpoint.attempts.get(str(data.get("prompt_id")))
        if attempt is None:
            return
        if kind == "execution_start":
            self.plan.started(attempt)
        elif kind == "executed":
            output = data.get("output") or {}
            endpoint.outputs.setdefault(attempt, []).extend(output_images({"": output}))
            if str(data.get("node")) == self.loader and output.get("state"):
                endpoint.loader_state[attempt] = str(output["state"][0])
        elif kind == "execution_success":
            await self._finish(endpoint, attempt, ok=True, note="")
        elif kind == "execution_error":
            note = f"{data.get('node_type')}: {str(data.get('exception_message', '')).strip()}"
            await self._finish(endpoint, attempt, ok=False, note=note)
        elif kind == "execution_interrupted":
            self._forget(endpoint, attempt)
            if attempt not in endpoint.cancelled:
                image = self._image_of(attempt)
                self.plan.returned(attempt)
                if image is not None and image not in self.plan.done:
                    self.ledger.returned(image)
                self.wake.set()

    def _image_of(self, attempt: int) -> int | None:
        lease = self.plan.active.get(attempt) or self.plan.revoked.get(attempt)
        return None if lease is None else lease.image

    def _forget(self, endpoint: Endpoint, attempt: int) -> None:
        for prompt_id, known in list(endpoint.attempts.items()):
            if known == attempt:
                del endpoint.attempts[prompt_id]

    async def _finish(self, endpoint: Endpoint, attempt: int, *, ok: bool, note: str) -> None:
        self.finishing += 1
        try:
            await self._settle(endpoint, attempt, ok=ok, note=note)
        finally:
            self.finishing -= 1
            self.wake.set()

    async def _settle(self, endpoint: Endpoint, attempt: int, *, ok: bool, note: str) -> None:
        """Records a finish: the first of an image is accepted (downloaded first, with
        --download), a later one discarded, a failure noted."""
        images = endpoint.outputs.pop(attempt, [])
        state = endpoint.loader_state.pop(attempt, "running")
        self._forget(endpoint, attempt)
        if ok and state == "done":  # the loader found the file unreadable or gone
            ok, note = False, "unreadable or missing (see the server's report)"
        elif ok:
            found = f" ({note})" if note else ""
            note = ("done before on this server" if state == "complete" else "saved") + found
        image = self._image_of(attempt)
        verdict = self.plan.finished(attempt, ok=ok)
        self.wake.set()
        if image is None:
            return
        source = self.ledger.source(image)
        for other in verdict.cancel:
            self._spawn(self._cancel(self.endpoints[other.server], other))
        if verdict.outcome == "duplicate":
            if ok:
                self.duplicates.append(f"{source} finished late on {endpoint.name}")
            return
        if verdict.outcome == "failed":
            self.ledger.failed(image, endpoint.url, note)
            self.view.finished(source, endpoint.name, "failed", note)
            return
        names = [f"{i['subfolder']}/{i['filename']}".lstrip("/") for i in images]
        if self.settings.download is not None:
            try:
                await self._download(endpoint, source, images)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
                note = f"saved on {endpoint.name} but not downloaded: {error}"
                self.plan.failed.add(image)
                self.ledger.failed(image, endpoint.url, note)
                self.view.finished(source, endpoint.name, "failed", note)
                return
        self.ledger.done(image, endpoint.url, attempt, names, note)
        self.view.finished(source, endpoint.name, verdict.outcome, note)

    async def _reconcile(self, endpoint: Endpoint) -> None:
        """After a gap (a reconnect, a restarted runner): what became of the prompts this
        server had. Finished ones count (late or not), queued ones are kept, unknown ones
        (the server restarted) go back in line."""
        leases = [*self.plan.active.values(), *self.plan.revoked.values()]
        if not endpoint.leftovers and not any(lease.server == endpoint.url for lease in leases):
            return  # nothing to ask about (every server's first connection in a fresh run)
        queued = await self._queued_ids(endpoint)
        for image, attempt, prompt_id in endpoint.leftovers:
            lease = self.plan.adopt(image, endpoint.url, attempt, prompt_id)
            endpoint.attempts[prompt_id] = lease.attempt
        endpoint.leftovers.clear()
        leases = [*self.plan.active.values(), *self.plan.revoked.values()]
        for lease in [lease for lease in leases if lease.server == endpoint.url]:
            if lease.prompt_id is None or lease.prompt_id in queued:
                continue
            history = await self._history(endpoint, lease.prompt_id)
            if history is not None:
                endpoint.outputs[lease.attempt] = output_images(history.get("outputs") or {})
                state = (history.get("outputs") or {}).get(self.loader, {}).get("state")
                if state:
                    endpoint.loader_state[lease.attempt] = str(state[0])
                status = history.get("status") or {}
                ok = status.get("status_str") == "success"
                # Said, so that a rerun's lines tell what it ran from what it only learnt.
                await self._finish(endpoint, lease.attempt, ok=ok, note=HISTORY_NOTE)
            elif lease.attempt in self.plan.active:
                self._forget(endpoint, lease.attempt)
                self.plan.returned(lease.attempt)
                if lease.image not in self.plan.done:
                    self.ledger.returned(lease.image)

    async def _queued_ids(self, endpoint: Endpoint) -> set[str]:
        # /queue items are [number, prompt_id, prompt, extra_data, outputs] (server.py
        # get_queue, v0.3.64 and 0.8.0).
        async with self.session.get(f"{endpoint.url}/queue", headers=endpoint.headers) as reply:
            reply.raise_for_status()
            queue = await reply.json()
        items = [*queue.get("queue_running", []), *queue.get("queue_pending", [])]
        return {str(item[1]) for item in items if len(item) > 1}

    async def _history(self, endpoint: Endpoint, prompt_id: str) -> dict[str, Any] | None:
        url = f"{endpoint.url}/history/{prompt_id}"
        async with self.session.get(url, headers=endpoint.headers) as reply:
            reply.raise_for_status()
            found = await reply.json()
        entry = found.get(prompt_id)  # history holds finished prompts only
        return entry if isinstance(entry, dict) else None

    # --- talking to a server -----------------------------------------------------------------

    def _submit(self, lease: Lease) -> None:
        endpoint = self.endpoints[lease.server]
        # Our own prompt id (POST /prompt takes one: server.py post_prompt, v0.3.64 and
        # 0.8.0), known before the server can send a single event about it.
        lease.prompt_id = uuid.uuid4().hex
        endpoint.attempts[lease.prompt_id] = lease.attempt
        self.ledger.lease(lease.image, endpoint.url, lease.attempt, lease.prompt_id)
        self._spawn(self._post(endpoint, lease))

    async def _post(self, endpoint: Endpoint, lease: Lease) -> None:
        source = self.ledger.source(lease.image)
        try:
            if endpoint.upload:
                await self._upload(endpoint, source)
            graph = one_image_graph(self.template, self.loader, endpoint.folder, source)
            body = {"prompt": graph, "client_id": endpoint.client_id, "prompt_id": lease.prompt_id}
            async with self.session.post(
                f"{endpoint.url}/prompt", json=body, headers=endpoint.headers
            ) as reply:
                answer = await reply.text()
            if reply.status == 400:  # ComfyUI's refusal of the graph: its node_errors
                raise FlowError(f"{endpoint.name} refused the prompt: {answer[:300]}")
            if reply.status != 200:  # a proxy's error, a server in trouble: not the image's
                raise aiohttp.ClientResponseError(
                    reply.request_info, (), status=reply.status, message=answer[:300]
                )
        except FlowError as error:
            self.view.error(str(error))
            self._give_back(endpoint, lease, failed=True)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            logger.info("%s: could not queue %s: %s", endpoint.name, source, error)
            self._give_back(endpoint, lease, failed=False)
            await self._reconnect(endpoint)

    async def _reconnect(self, endpoint: Endpoint) -> None:
        """A server that failed a request takes no work until it is checked again: its
        websocket is closed, and the connection loop connects, checks and reconciles."""
        if endpoint.ready:
            endpoint.ready = False
            self.plan.server_down(endpoint.url)
            self.view.server(endpoint.name, "lost")
        if endpoint.ws is not None:
            await endpoint.ws.close()

    def _give_back(self, endpoint: Endpoint, lease: Lease, *, failed: bool) -> None:
        self._forget(endpoint, lease.attempt)
        if failed:  # a refusal: the workflow does not run there; another server may differ
            self.plan.finished(lease.attempt, ok=False)
            self.ledger.failed(lease.image, endpoint.url, "refused by the server")
        else:
            self.plan.returned(lease.attempt)
            self.ledger.returned(lease.image)
        self.wake.set()

    async def _upload(self, endpoint: Endpoint, source: str) -> None:
        """The image into this batch's subfolder of the server's input (POST /upload/image,
        overwrite on: a retry or a second server's copy is the same file)."""
        rel = PurePosixPath(source)
        subfolder = PurePosixPath(endpoint.folder) / rel.parent
        form = aiohttp.FormData()
        form.add_field("image", (self.folder / rel).read_bytes(), filename=rel.name)
        form.add_field("type", "input")
        form.add_field("subfolder", subfolder.as_posix())
        form.add_field("overwrite", "true")
        async with self.session.post(
            f"{endpoint.url}/upload/image", data=form, headers=endpoint.headers
        ) as reply:
            answer = await reply.text()
        if 400 <= reply.status < 500:  # this file, here: not a reason to stop the server
            raise FlowError(f"{endpoint.name} refused the upload of {source}: {answer[:300]}")
        if reply.status != 200:
            raise aiohttp.ClientResponseError(
                reply.request_info, (), status=reply.status, message=answer[:300]
            )
        endpoint.uploaded = True

    async def _download(
        self, endpoint: Endpoint, source: str, images: Sequence[Mapping[str, str]]
    ) -> None:
        assert self.settings.download is not None
        for image in images:
            params = {**image, "type": "output"}
            async with self.session.get(
                f"{endpoint.url}/view", params=params, headers=endpoint.headers
            ) as reply:
                reply.raise_for_status()
                data = await reply.read()
            target = local_path(self.settings.download, source, image)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)

    async def _cancel(self, endpoint: Endpoint, lease: Lease) -> None:
        """Best effort: the attempt out of the server's queue, or interrupted if it runs
        (POST /interrupt with a prompt_id only stops that prompt: v0.3.64 and 0.8.0)."""
        if lease.prompt_id is None:
            return
        endpoint.cancelled.add(lease.attempt)
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
            for route, body in (
                ("queue", {"delete": [lease.prompt_id]}),
                ("interrupt", {"prompt_id": lease.prompt_id}),
            ):
                async with self.session.post(
                    f"{endpoint.url}/{route}", json=body, headers=endpoint.headers
                ) as reply:
                    await reply.read()

    async def _drop_waiting(self) -> None:
        """Ctrl-C: prompts still waiting in a queue are deleted and their images go back;
        a running image is left to finish (the next run asks what became of it)."""
        waiting = [lease for lease in self.plan.active.values() if lease.started_at is None]
        for lease in waiting:
            endpoint = self.endpoints[lease.server]
            if lease.prompt_id is None or not endpoint.ready:
                continue
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                async with self.session.post(
                    f"{endpoint.url}/queue",
                    json={"delete": [lease.prompt_id]},
                    headers=endpoint.headers,
                ) as reply:
                    await reply.read()
                if lease.prompt_id not in await self._queued_ids(endpoint):
                    self.ledger.returned(lease.image)

    async def _remove_uploads(self) -> None:
        for endpoint in self.endpoints.values():
            if not endpoint.uploaded:
                continue
            url = f"{endpoint.url}/api{UPLOADS_PATH.format(key=self.key)}"
            try:
                async with self.session.delete(url, headers=endpoint.headers) as reply:
                    await reply.read()
                removed = reply.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                removed = False
            if not removed:
                self.view.note(
                    f"{endpoint.name}: the uploads stay in its input folder, "
                    f"{UPLOAD_ROOT}/{self.key} (remove them by hand)"
                )

    def write_report(self) -> Path:
        path = self.settings.report or self.ledger.path.with_suffix(".report.jsonl")
        write_report_file(self.ledger, path)
        return path


async def missing_nodes(
    session: aiohttp.ClientSession, endpoint: Endpoint, graph: Mapping[str, Any]
) -> list[str]:
    """The workflow's node classes the server does not have (GET /object_info/<class>
    answers {} for one it lacks: server.py get_object_info_node, v0.3.64 and 0.8.0)."""
    needed = sorted({str(n["class_type"]) for n in graph.values() if isinstance(n, dict)})

    async def lacks(name: str) -> bool:
        url = f"{endpoint.url}/object_info/{name}"
        async with session.get(url, headers=endpoint.headers) as reply:
            if reply.status != 200:
                raise aiohttp.ClientResponseError(
                    reply.request_info, (), status=reply.status, message="not ComfyUI?"
                )
            return name not in await reply.json()

    # All at once: one round trip, not one per class (the start of a short run counts).
    answers = await asyncio.gather(*(lacks(name) for name in needed))
    return [name for name, lacking in zip(needed, answers, strict=True) if lacking]


def folder_verdict(status: int, answer: Any) -> tuple[bool, str]:
    """(whether the server reads the folder, why not) from its answer to our folder route;
    a server without the route (404: an older comfy-clientid-bridge) cannot say, so it
    gets uploads."""
    if status == 404:
        return False, "it cannot say (an older comfy-clientid-bridge)"
    if status != 200 or not isinstance(answer, dict):
        return False, f"its folder check answered {status}"
    if answer.get("readable") is True:
        return True, ""
    return False, str(answer.get("why") or "not readable there")


async def decide_upload(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    folder: Path,
    probe: str,
    key: str,
    view: FlowView,
) -> None:
    """Asks the server once whether it reads the folder (and `probe`, one of its images);
    one that cannot gets each image uploaded (README: No shared folder)."""
    if endpoint.upload is not None:
        return
    params = {"path": str(folder.resolve()), "file": probe}
    url = f"{endpoint.url}/api{FOLDER_PATH}"
    async with session.get(url, params=params, headers=endpoint.headers) as reply:
        if reply.status in (401, 403):
            raise aiohttp.ClientResponseError(reply.request_info, (), status=reply.status)
        try:
            answer = await reply.json(content_type=None) if reply.status == 200 else None
        except ValueError:  # not our route's JSON (a proxy's page): it cannot say either
            answer = None
    reads, why = folder_verdict(reply.status, answer)
    endpoint.upload = not reads
    if not reads:
        endpoint.folder = f"{UPLOAD_ROOT}/{key}"
        view.note(f"{endpoint.name}: does not read {folder} ({why}); its images are uploaded")


def listing(inputs: Mapping[str, Any], folder: Path) -> list[str]:
    """The images of the folder the loader's own inputs select, in its order."""
    source = Source(
        folder=folder,
        patterns=parse_patterns(str(inputs.get("pattern", ""))),
        recursive=bool(inputs.get("recursive", False)),
        order=str(inputs.get("order", "natural")),
        seed=int(inputs.get("shuffle_seed", 0)),
        start_index=int(inputs.get("start_index", 0)),
        limit=int(inputs.get("limit", 0)),
        shard_index=int(inputs.get("shard_index", 0)),
        shard_count=int(inputs.get("shard_count", 1)),
    )
    return source.list()


def state_folder(environ: Mapping[str, str]) -> Path:
    """Where ledgers and reports live by default ($XDG_STATE_HOME or ~/.local/state)."""
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "comfy-clientid-bridge" / "batches"


async def run_flow(
    urls: Sequence[str],
    graph: Mapping[str, Any],
    loader: str,
    folder: Path,
    settings: Settings,
    view: FlowView,
    headers: Mapping[str, Mapping[str, str]],
    environ: Mapping[str, str],
) -> int:
    """The folder over the servers; returns the exit status."""
    images = listing(graph[loader]["inputs"], folder)
    key = batch_key(graph, loader, folder)
    ledger = Ledger(settings.ledger or state_folder(environ) / f"{key}.sqlite")
    try:
        ledger.sync(images)
        endpoints = []
        for url in urls:
            client_id = ledger.get(f"client_id {url}") or uuid.uuid4().hex
            ledger.put(f"client_id {url}", client_id)
            there = f"{UPLOAD_ROOT}/{key}" if settings.upload else str(folder.resolve())
            name = url.split("://", 1)[-1]
            endpoint = Endpoint(url, name, dict(headers.get(url, {})), client_id, there)
            endpoint.upload = True if settings.upload else None  # None: asked at the check
            endpoints.append(endpoint)
        probe = images[0] if images else ""
        async with client_session(urls, REQUEST_TIMEOUT) as session:
            await preflight(session, endpoints, graph, view, folder=folder, probe=probe, key=key)
            counts = ledger.counts()
            view.started(len(images), counts["done"], [e.name for e in endpoints], str(ledger.path))
            runner = Runner(
                session, ledger, endpoints, graph, loader, folder, key, settings, view, probe=probe
            )
            status = await runner.run()
            report = runner.write_report()
            counts = ledger.counts()
            if status == EXIT_OK and (counts["pending"] or counts["leased"] or counts["failed"]):
                status = EXIT_INCOMPLETE
            moves = [
                f"{ledger.source(m.image)}: {host(m.source)} -> {host(m.to or '?')} ({m.reason})"
                for m in runner.plan.moves
            ]
            uploads = [e.name for e in endpoints if e.upload]
            view.summary(status, counts, moves, runner.duplicates, str(report), uploads)
            return status
    finally:
        ledger.close()


def host(url: str) -> str:
    return url.split("://", 1)[-1]


async def preflight(
    session: aiohttp.ClientSession,
    endpoints: Sequence[Endpoint],
    graph: Mapping[str, Any],
    view: FlowView,
    *,
    folder: Path,
    probe: str,
    key: str,
) -> None:
    """Nothing is queued anywhere when a server lacks the workflow's nodes, or when no
    server answers; a server that does not answer yet is named and joins when it does.
    Each server answering is also asked whether it reads the folder."""

    async def check(endpoint: Endpoint) -> list[str]:
        missing, _ = await asyncio.gather(
            missing_nodes(session, endpoint, graph),
            decide_upload(session, endpoint, folder, probe, key, view),
        )
        endpoint.checked = not missing
        return missing

    answers = await asyncio.gather(
        *(check(endpoint) for endpoint in endpoints), return_exceptions=True
    )
    problems, answering = [], 0
    for endpoint, answer in zip(endpoints, answers, strict=True):
        if isinstance(answer, list) and answer:
            message = (
                f"{endpoint.name}: the workflow's nodes are missing there: {', '.join(answer)}"
            )
            if any(name.startswith("ClientIdBridge_") for name in answer):
                message += " (is comfy-clientid-bridge installed there?)"
            problems.append(message)
        elif isinstance(answer, list):
            answering += 1
        elif isinstance(answer, aiohttp.ClientResponseError) and answer.status in (401, 403):
            problems.append(f"{endpoint.name}: refused our credentials ({answer.status})")
        else:
            reason = str(answer) or type(answer).__name__
            view.note(f"{endpoint.name}: not answering ({reason}); it gets work when it does")
    if not problems and not answering:
        problems.append("no server answers")
    if problems:
        raise FlowError("nothing was queued:\n  " + "\n  ".join(problems))
