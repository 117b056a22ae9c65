"""A POST /prompt is answered before ComfyUI's executor thread is woken for its prompt.

Core's handler queues the prompt (`PromptQueue.put`, which notifies the executor waiting in
`get`) and then returns its answer; aiohttp writes that once the middlewares have
returned. The woken executor asks for the GIL, the handler gives it up at the write's
socket call, and where the two threads share a CPU the kernel often runs the executor
right there: it runs the prompt, all of it for a cheap graph, before the answer leaves.
Measured with two real ComfyUI servers on one CPU (bench/bridge_overhead.py, docs/benchmarks.md):
that hand-off, not the package's few microseconds, made back-to-back browser prompts
slower with the package.

So while the package's middleware holds a /prompt request, the queue's `notify` is held
back: the item is queued as usual (GET /queue and the status message see it at once); only
the executor's wake-up waits until the answer is written, and at the latest until the
event loop's next turn, should anything after the put suspend. An executor that is busy
is not waiting, and finds the item when it next looks, as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .scope import SCOPE

# On by default; "0", "off", ... (register.OFF_VALUES) wakes the executor at the put, as core.
ANSWER_FIRST_SWITCH = "COMFY_CLIENTID_BRIDGE_ANSWER_FIRST"


class Wake:
    """The executor's held wake-up: notifies the condition once, however often called."""

    __slots__ = ("_condition", "pending")

    def __init__(self, condition: Any) -> None:
        self._condition = condition
        self.pending = 0

    def __call__(self) -> None:
        if self.pending:
            count, self.pending = self.pending, 0
            with self._condition:
                self._condition.notify(count)


class HeldWakes:
    """Stands in for `PromptQueue.not_empty` (a threading.Condition over the queue's
    mutex): the executor waits on it as before; a notify made inside a /prompt request's
    scope is held in the scope's `Wake` (and its loop is asked to run it next turn)."""

    __slots__ = ("condition",)

    def __init__(self, condition: Any) -> None:
        self.condition = condition

    def __enter__(self) -> Any:
        return self.condition.__enter__()

    def __exit__(self, *exc_info: object) -> Any:
        return self.condition.__exit__(*exc_info)

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self.condition.wait(timeout))

    def notify(self, n: int = 1) -> None:
        scope = SCOPE.get()
        if scope is None:
            self.condition.notify(n)
            return
        if scope.wake is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # a scope outside a loop: nothing would run the held wake
                self.condition.notify(n)
                return
            scope.wake = Wake(self.condition)
            loop.call_soon(scope.wake)
        scope.wake.pending += n

    def notify_all(self) -> None:
        self.condition.notify_all()

    def __getattr__(self, name: str) -> Any:  # wait_for, _is_owned, ...: the condition's own
        return getattr(self.condition, name)


async def answer_now(request: web.Request, response: web.StreamResponse | None) -> None:
    """Writes a whole answer now. aiohttp then finds it sent and only logs it, as for a
    handler that prepares its own response. A client that has gone is left to aiohttp's
    own write, which meets the same and handles it as it always does."""
    if not isinstance(response, web.Response) or response.prepared:
        return
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass
