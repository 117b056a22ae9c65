"""Stopping batches over HTTP: the stop route, and ComfyUI's own cancel and queue clearing."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..routing.middleware import absolute_paths
from .engine import BatchEngine

logger = logging.getLogger(__name__)

DEFAULT_INTERRUPT_PATHS = ("/interrupt", "/api/interrupt")
DEFAULT_QUEUE_PATHS = ("/queue", "/api/queue")


@dataclass
class BatchControl:
    """Stops batches; the callables reach into ComfyUI's queue (see internals)."""

    engine: BatchEngine
    executing_prompt_id: Callable[[], str | None]
    drop_queued: Callable[[str], bool]
    interrupt: Callable[[], None]

    def stop(self, batch: str, *, interrupt_running: bool = True) -> dict[str, Any] | None:
        """Stops `batch` at once: its queued next prompt is dropped, its running one cut."""
        if not self.engine.knows(batch):
            return None
        pending = self.engine.stop(batch)
        if pending is not None:
            self.drop_queued(pending)
        running = self.engine.running_prompt_id(batch)
        if interrupt_running and running is not None and running == self.executing_prompt_id():
            self.interrupt()
        return self.engine.status(batch)

    def on_interrupt(self, prompt_id: str | None) -> None:
        """ComfyUI's cancel interrupts the running prompt; its batch must not go on."""
        target = prompt_id or self.executing_prompt_id()
        for batch in self.engine.batches_of_prompt(target):
            self.stop(batch, interrupt_running=False)

    def on_queue_edit(self, body: object) -> None:
        """POST /queue: "clear" stops every batch in flight (its running image finishes,
        no next one is queued); "delete" of a batch's queued next prompt stops that batch."""
        if not isinstance(body, dict):
            return
        if body.get("clear"):
            for batch in self.engine.batches_in_flight():
                self.stop(batch, interrupt_running=False)
        deleted = body.get("delete")
        if isinstance(deleted, list):
            for prompt_id in deleted:
                for batch in self.engine.batches_of_prompt(
                    prompt_id if isinstance(prompt_id, str) else None
                ):
                    self.stop(batch, interrupt_running=False)


CONTROL = web.AppKey("comfy_clientid_bridge.batch_control", BatchControl)


async def stop_batch(request: web.Request) -> web.Response:
    """POST /clientid_bridge/batch/{batch_id}/stop"""
    status = request.app[CONTROL].stop(request.match_info["batch_id"])
    if status is None:
        return web.json_response({"error": "no such batch running here"}, status=404)
    return web.json_response(status)


async def batch_status(request: web.Request) -> web.Response:
    """GET /clientid_bridge/batch/{batch_id}"""
    status = request.app[CONTROL].engine.status(request.match_info["batch_id"])
    if status is None:
        return web.json_response({"error": "no such batch running here"}, status=404)
    return web.json_response(status)


def batch_cancel_middleware(
    *,
    control: BatchControl,
    interrupt_paths: Iterable[str] = DEFAULT_INTERRUPT_PATHS,
    queue_paths: Iterable[str] = DEFAULT_QUEUE_PATHS,
) -> Middleware:
    """After ComfyUI handles POST /interrupt or POST /queue, stops the batches they cut."""
    interrupts = absolute_paths(interrupt_paths, "interrupt_paths")
    queues = absolute_paths(queue_paths, "queue_paths")

    @web.middleware
    async def batch_cancel(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or (
            request.path not in interrupts and request.path not in queues
        ):
            return await handler(request)
        body = await _json_body(request)
        target = control.executing_prompt_id()  # before ComfyUI acts on the request
        response = await handler(request)
        if response.status != 200:
            return response
        if request.path in queues:
            control.on_queue_edit(body)
        else:
            prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
            control.on_interrupt(prompt_id if isinstance(prompt_id, str) else target)
        return response

    return batch_cancel


async def _json_body(request: web.Request) -> Any:
    """The request's JSON, or None; aiohttp caches the body for ComfyUI's handler."""
    try:
        return json.loads(await request.read())
    except ValueError:  # no body or not JSON: ComfyUI answers it as it always does
        return None
