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
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

THREADS_SWITCH = "COMFY_CLIENTID_BRIDGE_THREADS"
# Set on the wrappers, so a second copy of the package (imported under another name) sees
# that the classes are wrapped already and does not wrap them twice.
MARKER = "__clientid_bridge_thread_origin__"


class Origin:
    """The prompt a thread acts for, as the routing rules compare it: its id, its tab, and
    the graph and UI workflow a re-queue is matched with and given. Never extra_data's
    other keys (secrets such as api_key_comfy_org stay with the queue item).

    One per running prompt (register.ExecutingOrigin), shared by every thread and task tied
    to it, which is what `acting` counts: one entry each while alive. Appending to and
    popping from a deque are atomic, so no lock is taken on the path of every tie."""

    __slots__ = (
        "prompt_id",
        "client_id",
        "graph",
        "extra_pnginfo",
        "acting",
        "listed_by",
        "__weakref__",
    )

    def __init__(
        self,
        prompt_id: str,
        client_id: str | None,
        graph: Mapping[str, Any],
        extra_pnginfo: Mapping[str, Any] | None = None,
    ) -> None:
        self.prompt_id, self.client_id = prompt_id, client_id
        self.graph, self.extra_pnginfo = graph, extra_pnginfo
        self.acting: deque[None] = deque()
        self.listed_by: ThreadTies | None = None  # whose acts_for finds it by its id

    def __repr__(self) -> str:  # never the graph: prompt texts are the user's
        return f"Origin(prompt_id={self.prompt_id!r}, client_id={self.client_id!r})"


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
    if origin is None:
        return _tied_thread_origin()
    return origin if type(origin) is Origin else None


@contextmanager
def detached() -> Iterator[None]:
    """Threads started and tasks submitted inside act for no prompt: for a worker that the
    package starts during one prompt and that serves every later one (the batch saver's),
    which would otherwise act for the first prompt all its life."""
    previous = getattr(_acting, "origin", None)
    _acting.origin = UNTIED
    try:
        yield
    finally:
        _acting.origin = previous


def _tied_thread_origin() -> Origin | None:
    """A tied thread's origin, read from its run (_ActingRun): not copied into the
    thread-local, whose first use in a new thread costs more than all the rest of a tie."""
    run = threading.current_thread().__dict__.get("run")
    return run.origin if type(run) is _ActingRun else None


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
        # Origins with a thread or task alive for them, by prompt id; gone with the Origin.
        self._origins: weakref.WeakValueDictionary[str, Origin] = weakref.WeakValueDictionary()
        # Statistics for the status route: `+=` from two threads at once may lose one.
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
        tied = _tied_thread_origin()
        if tied is not None:
            return tied
        _acting.origin = EXECUTOR if self._on_executor() else NOBODY
        return self.origin_here()

    def acts_for(self, prompt_id: str) -> bool:
        """Whether a thread or task acting for this prompt is alive (or not run yet)."""
        origin = self._origins.get(prompt_id)
        return origin is not None and bool(origin.acting)

    def hold(self, origin: Origin, kind: str) -> None:
        if origin.listed_by is not self:  # once per origin: a weak dict's entry costs
            self._origins[origin.prompt_id] = origin
            origin.listed_by = self
        origin.acting.append(None)
        self.counts[kind] += 1

    def status(self) -> dict[str, Any]:
        return {
            "tied_threads": self.counts["threads"],
            "tied_tasks": self.counts["tasks"],
            "acting_now": sum(len(origin.acting) for origin in list(self._origins.values())),
        }


class _Acting:
    """`fn` run as its origin's: the thread's origin is set for the call and put back after.
    Alive from the submission until the call has returned or was dropped (a cancelled
    task), and counted in `origin.acting` that long."""

    __slots__ = ("fn", "origin")

    def __init__(self, fn: Callable[..., Any], origin: Origin, ties: ThreadTies, kind: str) -> None:
        self.fn, self.origin = fn, origin
        ties.hold(origin, kind)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        previous = getattr(_acting, "origin", None)
        _acting.origin = self.origin
        try:
            return self.fn(*args, **kwargs)
        finally:
            _acting.origin = previous

    def __del__(self) -> None:
        self.origin.acting.pop()


class _ActingRun(_Acting):
    """A tied thread's `run`, set on the instance: it shadows the class's run (Timer's and
    subclasses' too), since Thread._bootstrap_inner calls `self.run()`. Taken off when it
    returns, so a Thread object that node code keeps does not keep the origin."""

    __slots__ = ("thread", "own_run")

    def __init__(self, thread: threading.Thread, origin: Origin, ties: ThreadTies) -> None:
        own_run = thread.__dict__.get("run")  # a run set on the instance by node code
        self.thread, self.own_run, self.origin = thread, own_run, origin
        self.fn = type(thread).run.__get__(thread) if own_run is None else own_run
        ties.hold(origin, "threads")
        thread.__dict__["run"] = self

    def __call__(self) -> None:
        try:
            self.fn()  # acting_for() finds the origin here, on the thread's run
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
        previous = getattr(_acting, "origin", None)  # a mark origin_here set, or none
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
