"""Decode ahead and save behind: the batch loop's CPU work off ComfyUI's executor thread."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from ..routing.thread_origin import detached
from .images import FloatImage, OpenedImage, close_opened, decode_opened, open_image

logger = logging.getLogger(__name__)

PIPELINE_SWITCH = "COMFY_CLIENTID_BRIDGE_PIPELINE"
_OFF_VALUES = frozenset({"0", "off", "false", "no", "disabled"})  # as register.enabled reads
# Images handed to the save worker and not yet durable, the one being written included: what
# a SIGKILL can lose, and what the worker holds in memory (a 1024x1024 frame is 12 MB as the
# float tensor the saver is given). Two would do at a steady pace; the third absorbs a slow
# fsync without holding the GPU.
SAVES_IN_FLIGHT = 3
# Decoded images kept ready: the next one of a batch, and one more for a second batch whose
# prompts interleave with the first's.
PREPARED_AHEAD = 2
# How long the worker holds an image's save while it is the only one in flight, for the
# executor to be back in the workflow's own work (the next image's loader returned: release()).
# Started at once, its encode ran beside ComfyUI's work between two prompts and the next
# loader, on the cores they need (2 cores: GPU busy share 0.897 -> 0.915 at T = 100 ms, 0.824
# -> 0.854 at T = 50 ms, bench/gpu_busy.py). Without a next image it waits this long at most.
HOLD_SECONDS = 0.03
# How often a saver waiting for room looks whether its batch was stopped meanwhile.
STOP_POLL_SECONDS = 0.05
# How long ComfyUI's exit waits for saves in flight (a stuck disk must not hang the exit).
EXIT_WAIT_SECONDS = 30.0

Prepared = TypeVar("Prepared")
Result = TypeVar("Result")


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(PIPELINE_SWITCH, "1").strip().lower() not in _OFF_VALUES


@dataclass(frozen=True, eq=False)
class SaveJob:
    """One image's save: `work` encodes, writes and reports it; `targets` are the files it
    will write, reserved for it until it ends so the next images' names do not take them."""

    batch: str
    targets: tuple[Path, ...]
    work: Callable[[], None]


@dataclass
class SaveWorker:
    """One thread that runs save jobs in the order they are given, `depth` at most in flight.

    A job that raises marks its batch failed: the batch's later jobs are dropped until its next
    Run (`forget_failure`; their images were never reported, so that Run redoes them) and the
    error waits for the batch's next node to raise it (`raise_failure`). One thread, not several: the report keeps the order of
    the images, and `existing` (skip, increment) sees every earlier image on disk, as in the
    serial loop. The encoder spreads its own deflate over the cores (png.py).

    A save alone in flight waits up to `hold` seconds for `release()` before it starts: the
    loader calls it as it returns, so the encode runs while the workflow does, not during
    ComfyUI's work between two prompts. A second save handed over, or anyone waiting for the
    saves, ends the hold: a worker that is behind never holds.
    """

    depth: int = SAVES_IN_FLIGHT
    hold: float = HOLD_SECONDS
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _queued: deque[SaveJob] = field(default_factory=deque, repr=False)
    _in_flight: list[SaveJob] = field(default_factory=list, repr=False)
    _failures: dict[str, Exception] = field(default_factory=dict, repr=False)  # not shown yet
    _failed: set[str] = field(default_factory=set, repr=False)  # batches whose jobs are dropped
    _thread: threading.Thread | None = field(default=None, repr=False)
    _go: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1; got {self.depth}")

    def submit(self, job: SaveJob, stopped: Callable[[], bool]) -> bool:
        """Hands `job` over, first waiting while `depth` jobs are in flight (the back-pressure
        that keeps memory flat). False, and nothing handed over, when `stopped()` turns true
        while waiting: a Stop must not wait for the disk."""
        with self._changed:
            while len(self._in_flight) >= self.depth:
                if stopped():
                    return False
                self._changed.wait(STOP_POLL_SECONDS)
            self._in_flight.append(job)
            self._queued.append(job)
            if len(self._in_flight) == 1:
                self._go.clear()
            else:
                self._go.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="clientid_bridge_save", daemon=True
                )
                with detached():  # it serves every later prompt, not the first one only
                    self._thread.start()
            self._changed.notify_all()
        return True

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queued:
                    self._changed.wait()
                job = self._queued.popleft()
                dropped = job.batch in self._failed
            if not dropped:
                self._go.wait(self.hold)
            error = None if dropped else _attempt(job)
            with self._changed:
                if error is not None and job.batch not in self._failed:
                    self._failed.add(job.batch)
                    self._failures[job.batch] = error
                self._in_flight.remove(job)
                self._changed.notify_all()

    def release(self) -> None:
        """The executor is in a workflow's own work again: a save held may start."""
        self._go.set()

    def in_flight(self, batch: str | None = None) -> int:
        with self._changed:
            return sum(1 for job in self._in_flight if batch is None or job.batch == batch)

    def reserved(self) -> frozenset[Path]:
        """The files of jobs in flight: taken, for the next images' names."""
        with self._changed:
            return frozenset(path for job in self._in_flight for path in job.targets)

    def is_pending(self, path: Path) -> bool:
        with self._changed:
            return any(path in job.targets for job in self._in_flight)

    def wait(self, batch: str | None = None, timeout: float | None = None) -> bool:
        """Blocks until no job of `batch` (of any batch: None) is in flight; False on timeout."""
        self._go.set()
        with self._changed:
            return self._changed.wait_for(lambda: not self._held(batch), timeout)

    def _held(self, batch: str | None) -> bool:
        return any(batch is None or job.batch == batch for job in self._in_flight)

    def raise_failure(self, batch: str) -> None:
        """Raises, once, the error of a save of `batch` that failed in the background."""
        with self._changed:
            error = self._failures.pop(batch, None)
        if error is not None:
            raise RuntimeError(str(error)) from error

    def forget_failure(self, batch: str) -> None:
        """A new Run of `batch`: its jobs are saved again; an earlier failure nobody was shown
        is in its report."""
        with self._changed:
            self._failures.pop(batch, None)
            self._failed.discard(batch)


def _attempt(job: SaveJob) -> Exception | None:
    try:
        job.work()
    except Exception as error:  # any: the worker must outlive one image's failure
        logger.warning("batch %s: a background save failed: %s", job.batch, error)
        return error
    return None


@dataclass(eq=False)
class _Ahead(Generic[Prepared, Result]):
    identity: tuple[int, int, int]
    prepared: Prepared | None
    future: Future[Result]


class Prefetcher(Generic[Prepared, Result]):
    """Gets the next image ready on one background thread while the current one runs.

    `prepare` runs on the caller's thread (cheap: opening a file, with whatever must not run
    on another thread), `finish` on the background thread (the decode), `discard` releases a
    prepared value never finished. `take(path)` gives what `finish(prepare(path))` would:
    the value or the exception, from the background work when the file is unchanged since,
    else made there and then. At most `ahead` results are kept; the oldest is dropped.
    """

    def __init__(
        self,
        prepare: Callable[[Path], Prepared],
        finish: Callable[[Prepared], Result],
        discard: Callable[[Prepared], None],
        ahead: int = PREPARED_AHEAD,
    ) -> None:
        if ahead < 1:
            raise ValueError(f"ahead must be at least 1; got {ahead}")
        self.prepare, self.finish, self.discard, self.ahead = prepare, finish, discard, ahead
        self._lock = threading.Lock()
        self._ready: OrderedDict[Path, _Ahead[Prepared, Result]] = OrderedDict()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="clientid_bridge_prefetch")

    def prefetch(self, path: Path) -> None:
        identity = _identity(path)
        if identity is None:
            return  # gone: the loader reports it when its turn comes
        with self._lock:
            if path in self._ready:
                return
        try:
            prepared = self.prepare(path)
        except Exception as error:  # kept, and raised by take() as a direct load would
            failed = Future[Result]()
            failed.set_exception(error)
            ahead = _Ahead[Prepared, Result](identity, None, failed)
        else:
            ahead = _Ahead(identity, prepared, self._pool.submit(self.finish, prepared))
        with self._lock:
            self._ready[path] = ahead
            while len(self._ready) > self.ahead:
                self._drop(self._ready.popitem(last=False)[1])

    def take(self, path: Path) -> Result:
        with self._lock:
            ahead = self._ready.pop(path, None)
        if ahead is not None and ahead.identity == _identity(path):
            return ahead.future.result()
        if ahead is not None:
            self._drop(ahead)
        return self.finish(self.prepare(path))

    def _drop(self, ahead: _Ahead[Prepared, Result]) -> None:
        if ahead.future.cancel() and ahead.prepared is not None:
            self.discard(ahead.prepared)

    def kept(self) -> Collection[Path]:
        with self._lock:
            return list(self._ready)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What says a file is the one prepared: replaced, rewritten or touched, it is not."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class QueueAhead:
    """A batch's next prompt, queued on a background thread while the current one runs.

    The POST's few milliseconds (validation, every on-prompt handler) then pass while the
    GPU works, not between two images. One per batch: `submit` replaces an older one (its
    cursor is stale), `take(batch, cursor)` hands Batch Next the one for `cursor`, or None.
    The pool's task acts for the prompt that submitted it (routing/thread_origin.py).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ahead: dict[str, tuple[int, Future[str]]] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="clientid_bridge_next")

    def submit(self, batch: str, cursor: int, post: Callable[[], str]) -> None:
        future = self._pool.submit(post)
        with self._lock:
            self._ahead[batch] = (cursor, future)

    def take(self, batch: str, cursor: int) -> Future[str] | None:
        with self._lock:
            queued, future = self._ahead.pop(batch, (None, None))
        return future if queued == cursor else None

    def wait(self) -> None:
        """Blocks until every POST handed over so far has ended (the pool runs them in turn)."""
        self._pool.submit(lambda: None).result()


@dataclass
class Pipeline:
    """What the batch nodes hand work to: the save worker, the prefetcher of images and the
    next prompts queued ahead."""

    saves: SaveWorker
    loads: Prefetcher[OpenedImage, tuple[FloatImage, FloatImage]]
    next_prompts: QueueAhead = field(default_factory=QueueAhead)


def make_pipeline(depth: int = SAVES_IN_FLIGHT, ahead: int = PREPARED_AHEAD) -> Pipeline:
    return Pipeline(SaveWorker(depth), Prefetcher(open_image, decode_opened, close_opened, ahead))


_UNSET = object()
_pipeline: Pipeline | None | object = _UNSET
_pipeline_lock = threading.Lock()


def batch_pipeline() -> Pipeline | None:
    """The process's pipeline, made at first use; None when COMFY_CLIENTID_BRIDGE_PIPELINE
    turns it off (read once: a loop does not change mode half-way)."""
    global _pipeline
    with _pipeline_lock:
        if _pipeline is _UNSET:
            _pipeline = make_pipeline() if enabled() else None
            if isinstance(_pipeline, Pipeline):
                atexit.register(_pipeline.saves.wait, None, EXIT_WAIT_SECONDS)
            else:
                logger.info("clientid_bridge: batch loop strictly serial (%s)", PIPELINE_SWITCH)
        return _pipeline if isinstance(_pipeline, Pipeline) else None
