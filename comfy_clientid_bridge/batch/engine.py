"""The batch loop's bookkeeping: one image per prompt, resumable, stoppable, never twice."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import internals
from .listing import list_images, order_images, select
from .progress import eta_seconds, format_eta, progress_text, summary_text
from .state import (
    FINISHED_STATUSES,
    BatchState,
    ReportWriter,
    StateStore,
    batch_id,
    first_unfinished,
    read_report,
)

logger = logging.getLogger(__name__)

# The loader input the loop advances; -1 means "started by a person": begin or resume.
CURSOR_INPUT = "cursor"


@dataclass(frozen=True, slots=True)
class Source:
    """What the loader was asked to go through."""

    folder: Path
    patterns: tuple[str, ...]
    recursive: bool
    order: str
    seed: int
    start_index: int = 0
    limit: int = 0
    shard_index: int = 0
    shard_count: int = 1

    def list(self) -> list[str]:
        found = list_images(self.folder, self.patterns, self.recursive)
        ordered = order_images(found, self.order, self.folder, self.seed)
        return select(ordered, self.start_index, self.limit, self.shard_index, self.shard_count)


@dataclass(frozen=True, slots=True)
class Item:
    """One image of a batch, claimed by the prompt that runs it."""

    batch_id: str
    index: int
    total: int
    source: str  # relative to the batch folder, POSIX separators
    path: Path


@dataclass(frozen=True, slots=True)
class Halt:
    """This prompt must not process an image; `message` says why, for the node's UI.

    `state` is what clients act on: "complete" (finished before), "busy" (its loop is
    queued already), "stopped", "duplicate" (this image was done), "unknown" (not running
    in this process), "done" (the end was reached just now).
    """

    batch_id: str
    message: str
    state: str


@dataclass
class _Run:
    """What the process knows of a batch beyond its files: not persisted on purpose.

    ComfyUI's queue does not survive a restart, so neither do pending prompt ids.
    """

    state: BatchState
    report: ReportWriter
    started: float = field(default_factory=time.monotonic)
    done_at_start: int = 0
    running_prompt_id: str | None = None
    pending_prompt_id: str | None = None
    stopped: bool = False
    finished: bool = False
    loader_id: str = ""


def workflow_key(prompt: Mapping[str, Any], loader_id: str) -> str:
    """The graph's class types and inputs without the loader's cursor: the same workflow
    on every iteration. What ComfyUI adds to a running prompt (its `is_changed` results)
    and titles are left out, or every run would be a new batch."""
    graph: dict[str, Any] = {}
    for node_id, node in prompt.items():
        if isinstance(node, Mapping):
            inputs = dict(node.get("inputs") or {})
            if str(node_id) == str(loader_id):
                inputs.pop(CURSOR_INPUT, None)
            graph[str(node_id)] = {"class_type": node.get("class_type"), "inputs": inputs}
    canonical = json.dumps(graph, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def source_batch_id(source: Source, key: str) -> str:
    selection = f"{source.start_index}:{source.limit}:{source.shard_index}/{source.shard_count}"
    return batch_id(
        str(source.folder),
        source.patterns,
        f"{source.order}:{'r' if source.recursive else 'f'}:{selection}",
        source.seed,
        key,
    )


class BatchEngine:
    """Batches by id: files listed once, progress from the append-only report.

    `is_alive(prompt_id)` says whether a prompt is still queued or running in ComfyUI.
    """

    def __init__(
        self, store: StateStore, report_dir: Path, is_alive: Callable[[str], bool]
    ) -> None:
        self.store, self.report_dir, self.is_alive = store, report_dir, is_alive
        self._runs: dict[str, _Run] = {}
        self._lock = threading.RLock()

    def report_path(self, batch: str) -> Path:
        return self.report_dir / f"batch_{batch}.jsonl"

    def begin(
        self, batch: str, source: Source, cursor: int, prompt_id: str | None, loader_id: str
    ) -> Item | Halt:
        """Claims the image this prompt processes, or says why it processes none."""
        with self._lock:
            if cursor < 0:
                claimed = self._start(batch, source, prompt_id)
            else:
                claimed = self._continue(batch, cursor, prompt_id)
            if isinstance(claimed, Item):
                self._runs[batch].loader_id = loader_id
            return claimed

    def loader_of(self, batch: str) -> str:
        """The loader node's id in the graph, whose cursor the next prompt advances."""
        return self._runs[batch].loader_id

    def _start(self, batch: str, source: Source, prompt_id: str | None) -> Item | Halt:
        run = self._runs.get(batch)
        if run is not None and run.pending_prompt_id and self.is_alive(run.pending_prompt_id):
            message = f"already running ({self.progress(batch)}); not started twice"
            return Halt(batch, message, "busy")
        run = self._load(batch, source)
        index = first_unfinished(run.state)
        if index is None:
            return Halt(batch, f"already complete: {self.summary(batch)}", "complete")
        run.stopped, run.pending_prompt_id, run.finished = False, None, False
        run.started, run.done_at_start = time.monotonic(), len(run.state.done)
        return self.claim(batch, index, prompt_id)

    def _continue(self, batch: str, cursor: int, prompt_id: str | None) -> Item | Halt:
        run = self._runs.get(batch)
        if run is None:
            message = "this batch is not running here (ComfyUI restarted?); run it again"
            return Halt(batch, message, "unknown")
        if run.stopped:
            return Halt(batch, f"stopped at {self.progress(batch)}", "stopped")
        if cursor >= len(run.state.files) or run.state.done.get(cursor) in FINISHED_STATUSES:
            message = f"image {cursor + 1} was already processed; duplicate skipped"
            return Halt(batch, message, "duplicate")
        run.pending_prompt_id = None
        return self.claim(batch, cursor, prompt_id)

    def _load(self, batch: str, source: Source) -> _Run:
        run = self._runs.get(batch)
        if run is None:
            state = self.store.load(batch)
            if state is None:
                state = BatchState(batch_id=batch, folder=str(source.folder), files=source.list())
                self.store.save(state)  # the list, once per batch
            run = _Run(state, ReportWriter(self.report_path(batch)))
            self._runs[batch] = run
        # The report is the progress: the last line per image wins. A "failed" save is
        # tried again in this pass; the others are final.
        done: dict[int, str] = {}
        for line in read_report(run.report.path):
            index = line.get("index")
            if isinstance(index, int) and 0 <= index < len(run.state.files):
                done[index] = str(line.get("status"))
        run.state.done = {i: status for i, status in done.items() if status in FINISHED_STATUSES}
        return run

    def claim(self, batch: str, index: int, prompt_id: str | None) -> Item:
        """Makes `index` the batch's current image, run by `prompt_id`."""
        with self._lock:
            run = self._runs[batch]
            run.state.next_index, run.running_prompt_id = index, prompt_id
            source = run.state.files[index]
            path = Path(run.state.folder) / source
            return Item(batch, index, len(run.state.files), source, path)

    def knows(self, batch: str) -> bool:
        return batch in self._runs

    def done_of_total(self, batch: str) -> tuple[int, int]:
        """(images saved, skipped or failed so far, images in the batch)."""
        run = self._runs[batch]
        return len(run.state.done), len(run.state.files)

    def current(self, batch: str) -> int:
        return self._runs[batch].state.next_index

    def running_prompt_id(self, batch: str) -> str | None:
        run = self._runs.get(batch)
        return None if run is None else run.running_prompt_id

    def source_of(self, batch: str, index: int) -> str:
        return self._runs[batch].state.files[index]

    def record(
        self, batch: str, index: int, status: str, output: str | None, error: str | None = None
    ) -> None:
        """One line in the report per input; the report is what a resume reads."""
        with self._lock:
            run = self._runs[batch]
            run.report.write(index, run.state.files[index], output, status, error)
            run.state.done[index] = status

    def next_index(self, batch: str, after: int) -> int | None:
        """The next image of this pass, or None when the batch is done."""
        with self._lock:
            run = self._runs[batch]
            for index in range(after + 1, len(run.state.files)):
                if index not in run.state.done:
                    return index
            return None

    def queued(self, batch: str, prompt_id: str) -> None:
        with self._lock:
            self._runs[batch].pending_prompt_id = prompt_id

    def is_stopped(self, batch: str) -> bool:
        run = self._runs.get(batch)
        return run is None or run.stopped

    def stop(self, batch: str) -> str | None:
        """Stops a batch; returns the id of its queued next prompt, for the caller to drop."""
        with self._lock:
            run = self._runs.get(batch)
            if run is None:
                return None
            run.stopped = True
            pending, run.pending_prompt_id = run.pending_prompt_id, None
            logger.info("batch %s stopped at %s", batch, self.progress(batch))
            return pending

    def batches_of_prompt(self, prompt_id: str | None) -> list[str]:
        """Batches whose current iteration is `prompt_id`, running or queued."""
        with self._lock:
            return [
                batch
                for batch, run in self._runs.items()
                if prompt_id is not None
                and prompt_id in (run.running_prompt_id, run.pending_prompt_id)
            ]

    def batches_in_flight(self) -> list[str]:
        """Batches with an image running or a next prompt queued."""
        with self._lock:
            return [
                batch
                for batch, run in self._runs.items()
                if not run.stopped
                and not run.finished
                and any(
                    pid is not None and self.is_alive(pid)
                    for pid in (run.running_prompt_id, run.pending_prompt_id)
                )
            ]

    def finish(self, batch: str) -> str:
        """The end of a pass: the summary, logged once."""
        with self._lock:
            run = self._runs[batch]
            summary = self.summary(batch)
            if not run.finished:
                run.finished = True
                logger.info("batch %s done: %s; report %s", batch, summary, run.report.path)
            return summary

    def counts(self, batch: str) -> dict[str, int]:
        statuses = list(self._runs[batch].state.done.values())
        return {name: statuses.count(name) for name in ("saved", "skipped", "unreadable", "failed")}

    def progress(self, batch: str, current: str = "") -> str:
        run = self._runs[batch]
        elapsed = time.monotonic() - run.started
        done, total = len(run.state.done), len(run.state.files)
        return progress_text(done, total, current, elapsed, done_before=run.done_at_start)

    def badge(self, batch: str) -> str:
        """What the loader's badge shows: '12/240 · ETA 3:10', or the end state."""
        run = self._runs[batch]
        counts = self.counts(batch)
        done, total = len(run.state.done), len(run.state.files)
        if run.finished or done == total:
            failed = counts["unreadable"] + counts["failed"]
            tail = f", {failed} failed" if failed else ""
            return f"done: {counts['saved']} saved, {counts['skipped']} skipped{tail}"
        if run.stopped:
            return f"stopped: {done}/{total}"
        elapsed = time.monotonic() - run.started
        eta = eta_seconds(done, total, elapsed, done_before=run.done_at_start)
        return f"{done}/{total} · ETA {format_eta(eta)}"

    def summary(self, batch: str) -> str:
        run = self._runs[batch]
        counts = self.counts(batch)
        return summary_text(
            counts["saved"],
            counts["skipped"],
            counts["unreadable"] + counts["failed"],
            time.monotonic() - run.started,
            self.report_dir,
        )

    def status(self, batch: str) -> dict[str, Any] | None:
        """What the stop/status routes report; None for a batch not known here."""
        run = self._runs.get(batch)
        if run is None:
            return None
        return {
            "batch_id": batch,
            "total": len(run.state.files),
            "done": len(run.state.done),
            "counts": self.counts(batch),
            "stopped": run.stopped,
            "finished": run.finished,
            "progress": self.progress(batch),
            "report": str(run.report.path),
        }


_engine: BatchEngine | None = None


def batch_engine() -> BatchEngine:
    """One engine per ComfyUI process: state under the user directory, reports in output."""
    global _engine
    if _engine is None:
        store = StateStore(internals.user_directory() / "clientid_bridge" / "batches")
        _engine = BatchEngine(
            store,
            internals.output_directory(),
            lambda prompt_id: internals.is_prompt_alive(internals.prompt_server(), prompt_id),
        )
    return _engine
