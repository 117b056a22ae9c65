"""Queue items that node code puts straight on ComfyUI's queue get the running prompt's tab."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .thread_origin import Origin, acting_for

logger = logging.getLogger(__name__)

# The one extra_data key carried from the running prompt, as for /prompt re-queues; the
# item's other fields, and its secrets, stay as the pack made them.
CARRIED_KEY = "extra_pnginfo"


@dataclass(frozen=True, slots=True)
class Running:
    """What a put is compared with: the running prompt's client and workflow."""

    client_id: str | None
    extra_pnginfo: Any = None


@dataclass
class QueuePutRouter:
    """Rewrites the extra_data of items put by node code, by the /prompt rules.

    `running` gives the running prompt (None when nothing runs), `is_connected` whether a
    client id has an open websocket, `on_worker_thread` whether the caller is ComfyUI's
    executor, `acting_for` which prompt another thread acts for (routing/thread_origin.py).
    `extra_data_of` and `with_extra_data` read and rebuild a queue item, whose layout is
    ComfyUI's (see internals)."""

    running: Callable[[], Running | None]
    is_connected: Callable[[str], bool]
    on_worker_thread: Callable[[], bool]
    extra_data_of: Callable[[Any], dict[str, Any] | None]
    with_extra_data: Callable[[Any, dict[str, Any]], Any]
    fit_layout: Callable[[Any], Any] = lambda item: item
    acting_for: Callable[[], Origin | None] = acting_for
    counts: Counter[str] = field(default_factory=Counter)

    def adopt(self, item: Any) -> Any:
        """The item to put: as given, or with the client id of the prompt node code acts for
        (the running one on the executor, its origin on a thread that node code started); in
        the layout of this release's queue (`fit_layout`)."""
        if self.on_worker_thread():
            running = self.running
        else:
            origin = self.acting_for()
            if origin is None:  # core's /prompt handler on the server's loop, and the like
                return item
            self.counts["from_threads"] += 1
            running = functools.partial(Running, origin.client_id, origin.extra_pnginfo)
        fitted = self.fit_layout(item)
        if fitted is not item:
            self.counts["layout_fixed"] += 1
        return self._route(fitted, running)

    def _route(self, item: Any, running_prompt: Callable[[], Running | None]) -> Any:
        extra_data = self.extra_data_of(item)
        if extra_data is None:
            return self._count(item, "untouched")
        own = extra_data.get("client_id")
        if isinstance(own, str) and self.is_connected(own):
            return self._count(item, "keep")
        running = running_prompt()
        if running is None or running.client_id is None:
            return self._count(item, "untouched")
        adopted = {**extra_data, "client_id": running.client_id}
        if CARRIED_KEY not in adopted and isinstance(running.extra_pnginfo, dict):
            adopted[CARRIED_KEY] = running.extra_pnginfo
        logger.info("clientid_bridge: a queue put from node code goes to the running prompt's tab")
        return self._count(self.with_extra_data(item, adopted), "rewrite")

    def _count(self, item: Any, action: str) -> Any:
        self.counts[action] += 1
        return item

    def status(self) -> dict[str, Any]:
        return {"queue_puts": dict(self.counts)}


def routing_put(put: Callable[[Any], Any], router: QueuePutRouter) -> Callable[[Any], Any]:
    """PromptQueue.put(item) with the item the router chooses."""

    def put_routed(item: Any) -> Any:
        return put(router.adopt(item))

    return put_routed
