"""Which prompt a thread or pool task that node code started acts for: its origin.

A `threading.Thread` (a `Timer` too) started on ComfyUI's executor thread while prompt P
runs acts for P from its first line to its last, and so does every thread it starts in
turn: it runs one target, so the tie is exact. A task submitted there to a
`concurrent.futures.ThreadPoolExecutor` (`loop.run_in_executor` and `asyncio.to_thread`
submit through it) acts for P while it runs, not its pool thread: pool threads outlive
prompts, and the next task on the same thread may be another tab's. Threads and tasks
started anywhere else (ComfyUI's own, the server's loop, other packs' monitors started at
import) are left as they are and act for nobody.

The routing rules (broadcasts, queue puts, the /prompt bridge, the credentials carrier) ask
`acting_for()` on threads other than the executor, and treat what they find as if the call
had been made on the executor while P ran.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

THREADS_SWITCH = "COMFY_CLIENTID_BRIDGE_THREADS"
# Set on the wrappers, so a second copy of the package (imported under another name) sees
# that the classes are wrapped already and does not wrap them twice.
MARKER = "__clientid_bridge_thread_origin__"


@dataclass(frozen=True, slots=True)
class Origin:
    """The prompt a thread acts for, as the routing rules compare it: its id, its tab, and
    the graph and UI workflow a re-queue is matched with and given. Never extra_data's
    other keys (secrets such as api_key_comfy_org stay with the queue item)."""

    prompt_id: str
    client_id: str | None
    graph: Mapping[str, Any] = field(repr=False, compare=False)
    extra_pnginfo: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)


class _Mark:
    """A per-thread mark that is no origin (see `_acting`)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# What `_acting.origin` holds on a thread, besides an Origin: the thread was seen to be
# ComfyUI's executor (EXECUTOR), seen to be another thread that acts for nobody (NOBODY),
# or is inside a pool's own `submit`, where the pool may start its threads (UNTIED: those
# outlive the prompt and must not be tied). Unset until a start or submission first asks.
EXECUTOR, NOBODY, UNTIED = _Mark("EXECUTOR"), _Mark("NOBODY"), _Mark("UNTIED")
_acting = threading.local()


def acting_for() -> Origin | None:
    """The origin of the calling thread (or of the pool task it runs); None for the
    executor itself and every thread or task started outside a prompt."""
    origin = getattr(_acting, "origin", None)
    return origin if type(origin) is Origin else None


class ThreadTies:
    """Gives threads and tasks started for a prompt that prompt's origin, and counts them.

    `on_executor` says whether the caller is ComfyUI's executor thread, `executing` gives
    the origin of the prompt running there (None between prompts).
    """

    def __init__(
        self,
        *,
        on_executor: Callable[[], bool],
        executing: Callable[[], Origin | None],
    ) -> None:
        self._on_executor, self._executing = on_executor, executing
        self._lock = threading.Lock()
        self._live: dict[str, int] = {}  # prompt id -> threads and tasks alive for it
        self.counts = {"threads": 0, "tasks": 0}

    def origin_here(self) -> Origin | None:
        """The origin a thread or task started by the caller gets: the caller's own, the
        running prompt's on the executor, else none. Whether the caller is the executor is
        asked once per thread; this runs on every thread start of the process."""
        origin = getattr(_acting, "origin", None)
        if origin is NOBODY or origin is UNTIED:
            return None
        if origin is EXECUTOR:
            return self._executing()
        if origin is not None:
            return origin  # type: ignore[no-any-return]
        _acting.origin = EXECUTOR if self._on_executor() else NOBODY
        return self.origin_here()

    def acts_for(self, prompt_id: str) -> bool:
        """Whether a thread or task acting for this prompt is alive (or not run yet)."""
        return prompt_id in self._live

    def hold(self, origin: Origin, kind: str) -> None:
        with self._lock:
            self._live[origin.prompt_id] = self._live.get(origin.prompt_id, 0) + 1
            self.counts[kind] += 1

    def release(self, origin: Origin) -> None:
        """Ends one `hold` (each _Acting releases once, when it goes)."""
        with self._lock:
            left = self._live[origin.prompt_id] - 1
            if left > 0:
                self._live[origin.prompt_id] = left
            else:
                del self._live[origin.prompt_id]

    def status(self) -> dict[str, Any]:
        return {
            "tied_threads": self.counts["threads"],
            "tied_tasks": self.counts["tasks"],
            "acting_now": sum(self._live.values()),
        }


class _Acting:
    """`fn` run as its origin's: the thread's origin is set for the call and put back after.
    Alive from the submission until the call has returned or was dropped (a cancelled
    task), and counted as alive for its prompt that long (ThreadTies.hold)."""

    __slots__ = ("fn", "origin", "ties")

    def __init__(self, fn: Callable[..., Any], origin: Origin, ties: ThreadTies, kind: str) -> None:
        self.fn, self.origin, self.ties = fn, origin, ties
        ties.hold(origin, kind)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        previous = getattr(_acting, "origin", None)
        _acting.origin = self.origin
        try:
            return self.fn(*args, **kwargs)
        finally:
            _acting.origin = previous

    def __del__(self) -> None:
        self.ties.release(self.origin)


class _ActingRun(_Acting):
    """A tied thread's `run`, set on the instance: it shadows the class's run (Timer's and
    subclasses' too), since Thread._bootstrap_inner calls `self.run()`. Taken off when it
    returns, so a Thread object that node code keeps does not keep the origin."""

    __slots__ = ("thread", "own_run")

    def __init__(self, thread: threading.Thread, origin: Origin, ties: ThreadTies) -> None:
        self.thread = thread
        self.own_run = thread.__dict__.get("run")  # a run set on the instance by node code
        run = type(thread).run.__get__(thread) if self.own_run is None else self.own_run
        super().__init__(run, origin, ties, "threads")
        thread.__dict__["run"] = self

    def __call__(self) -> None:
        _acting.origin = self.origin  # a new thread: nothing to put back
        try:
            self.fn()
        finally:
            self.untie()

    def untie(self) -> None:
        if self.own_run is None:
            self.thread.__dict__.pop("run", None)
        else:
            self.thread.__dict__["run"] = self.own_run


# The ties the wrappers consult; replaced whole by install (a test's, then ComfyUI's).
_ties: ThreadTies | None = None


def _tied_start(start: Callable[[threading.Thread], None]) -> Callable[[threading.Thread], None]:
    @functools.wraps(start)  # __wrapped__: the method as it was
    def start_tied(thread: threading.Thread) -> None:
        ties = _ties
        if ties is None or getattr(_acting, "origin", None) is NOBODY:  # the usual thread
            return start(thread)
        origin = ties.origin_here()
        if origin is None:
            return start(thread)
        acting = _ActingRun(thread, origin, ties)
        try:
            start(thread)
        except BaseException:
            acting.untie()
            raise

    setattr(start_tied, MARKER, True)
    return start_tied


def _tied_submit(submit: Callable[..., Future[Any]]) -> Callable[..., Future[Any]]:
    @functools.wraps(submit)
    def submit_tied(
        pool: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        ties = _ties
        if ties is None or getattr(_acting, "origin", None) is NOBODY:  # the usual submitter
            return submit(pool, fn, *args, **kwargs)
        origin = ties.origin_here()
        if origin is None:
            return submit(pool, fn, *args, **kwargs)
        previous = _acting.origin  # set by origin_here
        _acting.origin = UNTIED  # the pool may start its own threads here: they outlive P
        try:
            return submit(pool, _Acting(fn, origin, ties, "tasks"), *args, **kwargs)
        finally:
            _acting.origin = previous

    setattr(submit_tied, MARKER, True)
    return submit_tied


_install_lock = threading.Lock()
_wrapped_here = False  # whether this copy of the module wrapped the classes


def install(ties: ThreadTies) -> bool:
    """Makes `ties` the process's. Wraps `threading.Thread.start` and
    `ThreadPoolExecutor.submit` on first use, for the life of the process; False (and
    nothing changed) when another copy of the package wrapped them already: its ties act."""
    global _ties, _wrapped_here
    with _install_lock:
        if not _wrapped_here:
            if getattr(threading.Thread.start, MARKER, False):
                return False
            thread_class: Any = threading.Thread  # typed Any: its methods are replaced
            thread_class.start = _tied_start(thread_class.start)
            pool_class: Any = ThreadPoolExecutor
            pool_class.submit = _tied_submit(pool_class.submit)
            _wrapped_here = True
        _ties = ties
        return True


def installed() -> ThreadTies | None:
    return _ties
