"""Node code's broadcasts (messages sent with no sid) go to the tab whose prompt is running."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .thread_origin import Origin, acting_for

logger = logging.getLogger(__name__)

# ComfyUI's own broadcasts about the server, not about a prompt, that core sends from the
# executor thread with no sid: PromptServer.queue_updated -> "status" (the queue size every
# tab shows), called by PromptQueue.put and task_done. The complete list for v0.3.64 and
# 0.8.0 (every `send_sync`/`send` call in core without a sid; the others pass
# `server.client_id`, which is None only for a prompt without a client, and we leave those).
SERVER_EVENTS = frozenset({"status"})

# Event names an administrator wants kept as broadcasts, comma-separated.
ENV_KEEP_BROADCAST = "COMFY_CLIENTID_BRIDGE_BROADCAST_EVENTS"


def event_name(event: Any) -> str:
    """Binary events are ints (server.BinaryEventTypes); names are what people list."""
    return event if isinstance(event, str) else str(event)


def keep_broadcast_from(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    listed = environ.get(ENV_KEEP_BROADCAST, "")
    return SERVER_EVENTS | {name.strip() for name in listed.split(",") if name.strip()}


@dataclass
class BroadcastRouter:
    """Decides where a message without a sid goes.

    `running_client` is the client id of the prompt running now (None when nothing runs or
    it has no client), `is_connected` whether a client id has an open websocket, and
    `on_worker_thread` whether the caller is ComfyUI's executor, where node code runs, and
    `acting_for` which prompt another thread acts for (routing/thread_origin.py).
    """

    running_client: Callable[[], str | None]
    is_connected: Callable[[str], bool]
    on_worker_thread: Callable[[], bool]
    keep_broadcast: frozenset[str] = SERVER_EVENTS
    acting_for: Callable[[], Origin | None] = acting_for
    routed: dict[str, int] = field(default_factory=dict)
    from_threads: int = 0

    def target(self, event: Any, sid: str | None) -> str | None:
        """The sid to send with: unchanged, or the client of the prompt node code acts for:
        the running one on the executor, its origin on a thread that node code started."""
        if sid is not None:
            return sid
        origin = None
        if not self.on_worker_thread():
            origin = self.acting_for()
            if origin is None:  # the server's loop, core's threads, others' monitors
                return None
        name = event if type(event) is str else event_name(event)  # no call for the usual str
        if name in self.keep_broadcast:
            return None
        client_id = self.running_client() if origin is None else origin.client_id
        if client_id is None or not self.is_connected(client_id):
            return None
        if origin is not None:
            self.from_threads += 1
        routed = self.routed.get(name)
        if routed is None:
            routed = 0
            logger.info("clientid_bridge: %r broadcasts from node code now go to their tab", name)
        self.routed[name] = routed + 1  # plain dict: this runs once per routed message
        return client_id

    def status(self) -> dict[str, Any]:
        return {
            "routed_broadcasts": dict(self.routed),
            "kept_broadcast": sorted(self.keep_broadcast),
            "routed_from_threads": self.from_threads,
        }


def routing_send_sync(send_sync: Callable[..., Any], router: BroadcastRouter) -> Callable[..., Any]:
    """PromptServer.send_sync(event, data, sid=None) with the sid the router chooses."""

    def send_sync_routed(event: Any, data: Any, sid: str | None = None) -> Any:
        return send_sync(event, data, router.target(event, sid))

    return send_sync_routed


def routing_send(send: Callable[..., Any], router: BroadcastRouter) -> Callable[..., Any]:
    """The async PromptServer.send(event, data, sid=None), routed the same way.

    Core's publish loop calls it on the server's thread for every queued message: those
    pass through, since the router acts on the executor thread only. A plain function that
    hands back core's own coroutine: no extra coroutine per message."""

    def send_routed(event: Any, data: Any, sid: str | None = None) -> Any:
        return send(event, data, router.target(event, sid))

    return send_routed
