"""The batch loop's bookkeeping: one image per prompt, resumable, stoppable, never twice."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import internals
from .listing import find_images, order_images, select
from .naming import check_safe_relpath
from .progress import eta_seconds, format_eta, progress_text, summary_text
from .state import (
    FINISHED_STATUSES,
    BatchState,
    ReportWriter,
    StateStore,
    batch_id,
    first_unfinished,
    last_status,
    read_report,
)

logger = logging.getLogger(__name__)

# The loader input the loop advances; -1 means "started by a person": begin or resume.
CURSOR_INPUT = "cursor"
# The loader input the terminal runner sets: this prompt loads only this file of the folder.
ONE_FILE_INPUT = "file"


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
    file: str = ""  # one file of the folder (relative): the runner's one-image prompts

    def list(self) -> list[str]:
        if self.file:
            return [check_safe_relpath(self.file).as_posix()]
        found = find_images(self.folder, self.patterns, self.recursive)
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


# What the summary counts; "failed" and "unreadable" are shown together as failed.
COUNTED_STATUSES = ("saved", "skipped", "unreadable", "failed", "missing")


@dataclass
class _Run:
    """One run of a batch: its listing, made at the run's start, and what is done of it.

    `done` maps a listed file (relative to the folder) to its status: finished ones read
    from the report at the start, then this run's. Not persisted beyond the state file and
    the report on purpose: ComfyUI's queue does not survive a restart, so neither do
    pending prompt ids.
    """

    state: BatchState
    report: ReportWriter
    done: dict[str, str]
    counts: Counter[str]
    current: int = 0
    started: float = 0.0  # time.monotonic() at the run's start
    done_at_start: int = 0
    running_prompt_id: str | None = None
    pending_prompt_id: str | None = None
    # The cursor of a next prompt queued while this image's prompt ran (the pipeline's queue
    # ahead), and whether that prompt's Batch Next let it go: a prompt that failed or was cut
    # never reaches its Batch Next, and its batch must then stop as it always did.
    ahead: int | None = None
    let_go: bool = False
    stopped: bool = False
    one_file: bool = False  # a terminal runner's one-image prompt (Source.file)
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
                # One batch per workflow and folder, whichever file a runner's prompt names.
                inputs.pop(CURSOR_INPUT, None)
                inputs.pop(ONE_FILE_INPUT, None)
            graph[str(node_id)] = {"class_type": node.get("class_type"), "inputs": inputs}
    canonical = json.dumps(graph, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def source_batch_id(source: Source, key: str) -> str:
    selection = f"{source.start_index}:{source.limit}:{source.shard_index}/{source.shard_count}"
    if source.file:
        # The runner's one-image prompts share a batch (one report on the server), apart
        # from the loop over the same folder.
        selection = "one-file"
    return batch_id(
        str(source.folder),
        source.patterns,
        f"{source.order}:{'r' if source.recursive else 'f'}:{selection}",
        source.seed,
        key,
    )


class BatchEngine:
    """Batches by id: the folder listed once per run, progress from the append-only report.

    `is_alive(prompt_id)` says whether a prompt is still queued or running in ComfyUI.
    `saving(batch)` counts the batch's images handed to the save worker and not reported yet
    (batch/pipeline.py): what the progress text and badge show counts them as processed,
    since their prompts have ended and their files were shown; the counts clients act on
    (`done_of_total`, the status route) and the end of a batch wait for their report lines.
    """

    def __init__(
        self,
        store: StateStore,
        report_dir: Path,
        is_alive: Callable[[str], bool],
        saving: Callable[[str], int] = lambda batch: 0,
    ) -> None:
        self.store, self.report_dir, self.is_alive = store, report_dir, is_alive
        self.saving = saving
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
        run = self._runs[batch] = self._open(
            batch, source.folder, source.list(), one_file=bool(source.file)
        )
        index = first_unfinished(run.state.files, run.done)
        if index is None:
            return Halt(batch, f"already complete: {self.summary(batch)}", "complete")
        run.done_at_start = len(run.done)
        return self.claim(batch, index, prompt_id)

    def _continue(self, batch: str, cursor: int, prompt_id: str | None) -> Item | Halt:
        run = self._runs.get(batch)
        if run is None:
            message = "this batch is not running here (ComfyUI restarted?); run it again"
            return Halt(batch, message, "unknown")
        if run.stopped:
            return Halt(batch, f"stopped at {self.progress(batch)}", "stopped")
        files = run.state.files
        if run.ahead == cursor and not run.let_go:
            run.ahead = None
            self.stop(batch)
            message = f"stopped at {self.progress(batch)}: the previous image's prompt did not end"
            return Halt(batch, message, "stopped")
        if cursor >= len(files) or run.done.get(files[cursor]) in FINISHED_STATUSES:
            message = f"image {cursor + 1} was already processed; duplicate skipped"
            return Halt(batch, message, "duplicate")
        run.pending_prompt_id, run.ahead = None, None
        return self.claim(batch, cursor, prompt_id)

    def _open(self, batch: str, folder: Path, files: list[str], *, one_file: bool) -> _Run:
        """A run over this listing. The report is the progress: the last line per file wins,
        and a "failed" save is tried again. Files listed last time but gone now are
        reported once as "missing" (not for a one-file prompt: its listing is one file)."""
        previous = self.store.load(batch)
        report = ReportWriter(self.report_path(batch))
        last = last_status(read_report(report.path))
        listed = set(files)
        gone = [
            source
            for source in (previous.files if previous and not one_file else [])
            if source not in listed and last.get(source) not in (*FINISHED_STATUSES, "missing")
        ]
        for source in gone:
            report.write(None, source, None, "missing", "no longer in the folder")
        state = BatchState(batch, str(folder), files, previous.output_folder if previous else "")
        if state != previous:
            self.store.save(state)
        done = {f: last[f] for f in files if last.get(f) in FINISHED_STATUSES}
        counts = Counter(done.values())
        counts["missing"] = len(gone)
        return _Run(state, report, done, counts, started=time.monotonic(), one_file=one_file)

    def claim(self, batch: str, index: int, prompt_id: str | None) -> Item:
        """Makes `index` the batch's current image, run by `prompt_id`."""
        with self._lock:
            run = self._runs[batch]
            run.current, run.running_prompt_id = index, prompt_id
            source = run.state.files[index]
            path = Path(run.state.folder) / source
            return Item(batch, index, len(run.state.files), source, path)

    def is_one_file(self, batch: str) -> bool:
        """Whether the batch's prompts each name one file: the terminal runner's, which
        counts an image done when its prompt succeeds."""
        run = self._runs.get(batch)
        return run is not None and run.one_file

    def knows(self, batch: str) -> bool:
        return batch in self._runs

    def done_of_total(self, batch: str) -> tuple[int, int]:
        """(images saved, skipped or failed so far, images in the batch)."""
        run = self._runs[batch]
        return len(run.done), len(run.state.files)

    def processed(self, batch: str) -> int:
        """Images reported or being saved: the count a person is shown."""
        run = self._runs[batch]
        return min(len(run.done) + self.saving(batch), len(run.state.files))

    def current(self, batch: str) -> int:
        return self._runs[batch].current

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
            source = run.state.files[index]
            run.report.write(index, source, output, status, error)
            previous = run.done.get(source)
            if previous is not None:
                run.counts[previous] -= 1
            run.done[source], run.counts[status] = status, run.counts[status] + 1

    def writes_to(self, batch: str, folder: Path) -> None:
        """Where the saver puts this batch's images: the summary's "output:" names it."""
        with self._lock:
            state = self._runs[batch].state
            if state.output_folder != str(folder):
                state.output_folder = str(folder)
                self.store.save(state)

    def next_index(self, batch: str, after: int) -> int | None:
        """The next image of this pass, or None when the batch is done."""
        with self._lock:
            run = self._runs[batch]
            files = run.state.files
            for index in range(after + 1, len(files)):
                if files[index] not in run.done:
                    return index
            return None

    def queued(self, batch: str, prompt_id: str) -> None:
        with self._lock:
            self._runs[batch].pending_prompt_id = prompt_id

    def queue_ahead(self, batch: str, cursor: int) -> None:
        """The prompt of image `cursor` is being queued before the running one ends: it only
        loads its image once `let_go(batch, cursor)` says the running prompt got to its end."""
        with self._lock:
            run = self._runs[batch]
            run.ahead, run.let_go = cursor, False

    def let_go(self, batch: str, cursor: int) -> None:
        """The running prompt reached its Batch Next: the next one may load image `cursor`."""
        with self._lock:
            run = self._runs[batch]
            if run.ahead == cursor:
                run.let_go = True

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
        counts = self._runs[batch].counts
        return {name: counts[name] for name in COUNTED_STATUSES}

    def progress(self, batch: str, current: str = "") -> str:
        run = self._runs[batch]
        elapsed = time.monotonic() - run.started
        done, total = self.processed(batch), len(run.state.files)
        return progress_text(done, total, current, elapsed, done_before=run.done_at_start)

    def badge(self, batch: str) -> str:
        """What the loader's badge shows: '12/240 · ETA 3:10', or the end state."""
        run = self._runs[batch]
        counts = self.counts(batch)
        done, total = len(run.done), len(run.state.files)
        if run.finished or done == total:
            failed = counts["unreadable"] + counts["failed"]
            tail = f", {failed} failed" if failed else ""
            tail += f", {counts['missing']} missing" if counts["missing"] else ""
            return f"done: {counts['saved']} saved, {counts['skipped']} skipped{tail}"
        done = self.processed(batch)  # the end above waits for the last report line
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
            run.state.output_folder or self.report_dir,
            missing=counts["missing"],
        )

    def status(self, batch: str) -> dict[str, Any] | None:
        """What the stop/status routes report; None for a batch not known here."""
        run = self._runs.get(batch)
        if run is None:
            return None
        return {
            "batch_id": batch,
            "total": len(run.state.files),
            "done": len(run.done),
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
            saving=_saving,
        )
    return _engine


def _saving(batch: str) -> int:
    # Imported here: the pipeline needs numpy and Pillow, and the terminal runner imports this
    # module without them (it is installed with aiohttp and tqdm only).
    from .pipeline import batch_pipeline

    pipeline = batch_pipeline()
    return 0 if pipeline is None else pipeline.saves.in_flight(batch)
