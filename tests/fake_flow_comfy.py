"""A ComfyUI as the flowing runner sees it: /object_info, /ws, /prompt, /queue, /history,
/upload/image, /view, /interrupt and our uploads and folder routes. It "runs" one prompt at a time,
`hold` seconds each (0: at once, for the coordinator's own speed in bench/)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from aiohttp import web

LOADER_ID, SAVER_ID = "1", "2"


@dataclass
class FakeFlowComfy:
    hold: float = 0.0
    token: str | None = None  # when set, every request needs "Authorization: Bearer <token>"
    fail: set[str] = field(default_factory=set)  # sources whose prompt fails
    sockets: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    queued: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)  # pid, graph, cid
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # each prompt's file, in order
    uploads: dict[str, bytes] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)  # prompt ids deleted from the queue
    authorizations: list[str] = field(default_factory=list)
    running: str | None = None
    paused: asyncio.Event = field(default_factory=asyncio.Event)  # set: the worker waits
    gone: bool = False  # answers nothing but 503 (a dead machine behind a proxy)
    reads_folder: bool | None = True  # its answer to the folder route; None: no such route
    asked: list[dict[str, str]] = field(default_factory=list)  # the folder route's queries
    requests: list[str] = field(default_factory=list)  # "GET /path" of each request

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/object_info/{cls}", self._object_info)
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/prompt", self._prompt)
        app.router.add_get("/queue", self._queue)
        app.router.add_post("/queue", self._delete_prompts)
        app.router.add_post("/interrupt", self._ok)
        app.router.add_get("/history/{pid}", self._history)
        app.router.add_post("/upload/image", self._upload)
        app.router.add_get("/view", self._view)
        app.router.add_delete("/api/clientid_bridge/uploads/{key}", self._delete)
        app.router.add_get("/api/clientid_bridge/folder", self._folder)
        app.on_startup.append(self._start_worker)
        app.on_cleanup.append(self._stop_worker)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.gone:
            return web.json_response({"error": "gone"}, status=503)
        self.requests.append(f"{request.method} {request.path}")
        given = request.headers.get("Authorization", "")
        self.authorizations.append(given)
        if self.token is not None and given != f"Bearer {self.token}":
            return web.json_response({"error": "login"}, status=401)
        return await handler(request)  # type: ignore[no-any-return]

    async def _start_worker(self, app: web.Application) -> None:
        self._work: asyncio.Queue[tuple[str, dict[str, Any], str]] = asyncio.Queue()
        self._worker = asyncio.ensure_future(self._run())

    async def _stop_worker(self, app: web.Application) -> None:
        self._worker.cancel()
        for ws in list(self.sockets.values()):
            await ws.close()

    async def go_away(self) -> None:
        """Gone mid-run: the image it holds never finishes, its sockets close."""
        self.gone = True
        self.paused.set()
        for ws in list(self.sockets.values()):
            await ws.close()

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response({request.match_info["cls"]: {}})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets[request.query["clientId"]] = ws
        async for _ in ws:
            pass
        return ws

    async def _prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        pid = str(body["prompt_id"])
        item = (pid, body["prompt"], str(body["client_id"]))
        self.queued.append(item)
        self._work.put_nowait(item)
        return web.json_response({"prompt_id": pid, "number": len(self.queued)})

    async def _run(self) -> None:
        while True:
            pid, graph, client_id = await self._work.get()
            while self.paused.is_set():
                await asyncio.sleep(0.01)
            if pid in self.dropped:
                continue
            self.running = pid
            source = str(graph[LOADER_ID]["inputs"]["file"])
            self.sources.append(source)
            await self._send(client_id, "execution_start", {"prompt_id": pid})
            if self.hold:
                await asyncio.sleep(self.hold)
            if source in self.fail:
                await self._send(client_id, "execution_error", {"prompt_id": pid})
                status = "error"
                outputs: dict[str, Any] = {}
            else:
                stem = PurePosixPath(source).stem
                parent = PurePosixPath(source).parent.as_posix()
                sub = "out" if parent == "." else f"out/{parent}"
                image = {"filename": f"{stem}_out.png", "subfolder": sub, "type": "output"}
                outputs = {SAVER_ID: {"images": [image]}}
                executed = {"prompt_id": pid, "node": SAVER_ID, "output": outputs[SAVER_ID]}
                await self._send(client_id, "executed", executed)
                await self._send(client_id, "execution_success", {"prompt_id": pid})
                status = "success"
            self.history[pid] = {
                "outputs": outputs,
                "status": {"status_str": status, "completed": status == "success"},
            }
            self.running = None

    async def _send(self, client_id: str, kind: str, data: dict[str, Any]) -> None:
        ws = self.sockets.get(client_id)
        if ws is not None and not ws.closed:
            await ws.send_json({"type": kind, "data": data})

    async def _queue(self, request: web.Request) -> web.Response:
        waiting = [
            [n, pid]
            for n, (pid, _, _) in enumerate(self.queued)
            if pid not in self.history and pid not in self.dropped
        ]
        running = [item for item in waiting if item[1] == self.running]
        pending = [item for item in waiting if item[1] != self.running]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _delete_prompts(self, request: web.Request) -> web.Response:
        body = await request.json()
        # Like ComfyUI: a running prompt is not deleted by POST /queue.
        self.dropped.update(str(pid) for pid in body.get("delete", []) if pid != self.running)
        return web.json_response({})

    async def _ok(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _history(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form["image"]
        assert isinstance(image, web.FileField)
        name = f"{form['subfolder']}/{image.filename}"
        self.uploads[name] = image.file.read()
        return web.json_response({"name": image.filename, "subfolder": form["subfolder"]})

    async def _view(self, request: web.Request) -> web.Response:
        name = f"{request.query['subfolder']}/{request.query['filename']}"
        return web.Response(body=f"png of {name}".encode())

    async def _folder(self, request: web.Request) -> web.Response:
        self.asked.append(dict(request.query))
        if self.reads_folder is None:
            raise web.HTTPNotFound()
        return web.json_response({"readable": self.reads_folder, "why": "missing here"})

    async def _delete(self, request: web.Request) -> web.Response:
        self.deleted.append(request.match_info["key"])
        return web.json_response({"removed": True})
