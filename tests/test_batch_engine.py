"""The batch loop's bookkeeping: resume, new files, duplicates, stop, one listing per run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from comfy_clientid_bridge import internals
from comfy_clientid_bridge.batch import engine as engine_module
from comfy_clientid_bridge.batch.control import BatchControl
from comfy_clientid_bridge.batch.engine import (
    BatchEngine,
    Halt,
    Item,
    Source,
    batch_engine,
    source_batch_id,
    workflow_key,
)
from comfy_clientid_bridge.batch.listing import DEFAULT_PATTERNS
from comfy_clientid_bridge.batch.state import StateStore, read_report

LOADER = "7"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("img1.png", "img2.png", "img10.png", "img3.png"):
        (photos / name).write_bytes(b"x")
    return photos


@pytest.fixture
def alive() -> set[str]:
    """Prompt ids ComfyUI still has queued or running."""
    return set()


@pytest.fixture
def engine(tmp_path: Path, alive: set[str]) -> BatchEngine:
    return BatchEngine(StateStore(tmp_path / "state"), tmp_path / "out", alive.__contains__)


def source(folder: Path, **changes: object) -> Source:
    settings: dict[str, object] = {
        "folder": folder,
        "patterns": DEFAULT_PATTERNS,
        "recursive": False,
        "order": "natural",
        "seed": 0,
    }
    return Source(**{**settings, **changes})  # type: ignore[arg-type]


def run_to_end(engine: BatchEngine, batch: str, src: Source, cursor: int = -1) -> list[str]:
    """What the nodes do: claim, save, queue next; returns the sources processed."""
    processed = []
    claimed = engine.begin(batch, src, cursor, "p0", LOADER)
    while isinstance(claimed, Item):
        engine.record(batch, claimed.index, "saved", f"out/{claimed.source}")
        processed.append(claimed.source)
        following = engine.next_index(batch, claimed.index)
        if following is None:
            engine.finish(batch)
            break
        claimed = engine.begin(batch, src, following, f"p{following}", LOADER)
    return processed


def test_runs_in_natural_order_once(engine: BatchEngine, folder: Path) -> None:
    assert run_to_end(engine, "b1", source(folder)) == [
        "img1.png",
        "img2.png",
        "img3.png",
        "img10.png",
    ]
    lines = read_report(engine.report_path("b1"))
    assert [(line["index"], line["source"]) for line in lines] == [
        (0, "img1.png"),
        (1, "img2.png"),
        (2, "img3.png"),
        (3, "img10.png"),
    ]


def test_a_finished_batch_does_not_start_again(engine: BatchEngine, folder: Path) -> None:
    """Auto Queue re-submits the workflow when the queue empties: no endless loop."""
    run_to_end(engine, "b1", source(folder))
    again = engine.begin("b1", source(folder), -1, "p9", LOADER)
    assert isinstance(again, Halt) and "already complete" in again.message


def test_resume_after_restart_starts_at_first_unsaved(tmp_path: Path, folder: Path) -> None:
    first = BatchEngine(StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False)
    claimed = first.begin("b1", source(folder), -1, "p0", LOADER)
    assert isinstance(claimed, Item)
    first.record("b1", 0, "saved", "o")
    first.record("b1", 1, "failed", None, "disk full")

    restarted = BatchEngine(StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False)
    assert run_to_end(restarted, "b1", source(folder)) == ["img2.png", "img3.png", "img10.png"]


def test_run_again_after_new_files_processes_the_new_ones_only(
    engine: BatchEngine, folder: Path
) -> None:
    """3 (here 4) done, 2 dropped in, Run pressed again: the 2 new ones, nothing twice."""
    run_to_end(engine, "b1", source(folder))
    (folder / "img0.png").write_bytes(b"x")  # sorts first: positions of the others shift
    (folder / "img11.png").write_bytes(b"x")
    assert run_to_end(engine, "b1", source(folder)) == ["img0.png", "img11.png"]
    assert isinstance(engine.begin("b1", source(folder), -1, "p9", LOADER), Halt)


def test_new_files_are_noticed_after_a_restart_too(tmp_path: Path, folder: Path) -> None:
    first = BatchEngine(StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False)
    run_to_end(first, "b1", source(folder))
    (folder / "img0.png").write_bytes(b"x")
    restarted = BatchEngine(StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False)
    assert run_to_end(restarted, "b1", source(folder)) == ["img0.png"]


def test_progress_is_keyed_by_path_not_by_position(engine: BatchEngine, folder: Path) -> None:
    """img1 done, then a file that sorts before it: img1 stays done, the others are next."""
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "saved", "o")  # img1.png
    (folder / "img0.png").write_bytes(b"x")
    claimed = engine.begin("b1", source(folder), -1, "p1", LOADER)
    assert isinstance(claimed, Item) and (claimed.index, claimed.source) == (0, "img0.png")
    assert engine.next_index("b1", 0) == 2  # img1.png (index 1 now) is skipped
    assert [line["source"] for line in read_report(engine.report_path("b1"))] == ["img1.png"]


def test_removed_files_are_reported_missing_once_and_do_not_fail_the_batch(
    engine: BatchEngine, folder: Path
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "saved", "o")
    (folder / "img2.png").unlink()
    assert run_to_end(engine, "b1", source(folder)) == ["img3.png", "img10.png"]
    assert engine.counts("b1")["missing"] == 1
    assert "1 missing" in engine.summary("b1") and "1 missing" in engine.badge("b1")
    lines = read_report(engine.report_path("b1"))
    assert [
        (line["source"], line["index"], line["error"])
        for line in lines
        if line["status"] == "missing"
    ] == [("img2.png", None, "no longer in the folder")]
    again = engine.begin("b1", source(folder), -1, "p9", LOADER)
    assert isinstance(again, Halt) and again.state == "complete"
    missing = [
        line for line in read_report(engine.report_path("b1")) if line["status"] == "missing"
    ]
    assert len(missing) == 1  # reported once, not at every Run


def test_a_file_that_comes_back_is_processed(engine: BatchEngine, folder: Path) -> None:
    run_to_end(engine, "b1", source(folder))
    (folder / "img2.png").unlink()
    run_to_end(engine, "b1", source(folder))
    (folder / "img9.png").write_bytes(b"x")
    assert run_to_end(engine, "b1", source(folder)) == ["img9.png"]


def test_a_file_found_missing_during_the_run_is_not_reported_again(
    engine: BatchEngine, folder: Path
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "missing", None, "gone")  # what the loader records
    (folder / "img1.png").unlink()
    engine.begin("b1", source(folder), -1, "p1", LOADER)
    lines = read_report(engine.report_path("b1"))
    assert [line["status"] for line in lines] == ["missing"]


def test_a_loop_step_for_a_processed_image_is_a_skipped_duplicate(
    engine: BatchEngine, folder: Path
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "saved", "o")
    duplicate = engine.begin("b1", source(folder), 0, "px", LOADER)
    assert isinstance(duplicate, Halt) and "duplicate" in duplicate.message


def test_a_second_start_while_the_loop_is_queued_is_refused(
    engine: BatchEngine, folder: Path, alive: set[str]
) -> None:
    """Two tabs, or Auto Queue, start the same batch: one loop only."""
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "saved", "o")
    engine.queued("b1", "p1")
    alive.add("p1")
    second = engine.begin("b1", source(folder), -1, "p2", LOADER)
    assert isinstance(second, Halt) and "already running" in second.message
    alive.clear()  # the queue was cleared: starting again resumes
    resumed = engine.begin("b1", source(folder), -1, "p3", LOADER)
    assert isinstance(resumed, Item) and resumed.index == 1


def test_stop_halts_the_next_step_and_returns_the_queued_prompt(
    engine: BatchEngine, folder: Path
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "saved", "o")
    engine.queued("b1", "p1")
    assert engine.stop("b1") == "p1"
    halted = engine.begin("b1", source(folder), 1, "p1", LOADER)
    assert isinstance(halted, Halt) and "stopped" in halted.message
    assert engine.begin("b1", source(folder), -1, "p5", LOADER) == Item(
        "b1", 1, 4, "img2.png", folder / "img2.png"
    )


def test_a_loop_step_after_restart_is_refused(engine: BatchEngine) -> None:
    halted = engine.begin("unknown", source(Path("/nowhere")), 3, "p", LOADER)
    assert isinstance(halted, Halt) and "restarted" in halted.message


def test_unreadable_is_final_but_failed_is_retried(
    tmp_path: Path, engine: BatchEngine, folder: Path
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "unreadable", None, "truncated")
    engine.record("b1", 1, "failed", None, "disk full")
    restarted = BatchEngine(StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False)
    claimed = restarted.begin("b1", source(folder), -1, "p1", LOADER)
    assert isinstance(claimed, Item) and claimed.index == 1


def test_the_folder_is_listed_once_per_run_at_its_start(
    engine: BatchEngine, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    original = Source.list

    def counting(self: Source) -> list[str]:
        calls.append(self.folder)
        return original(self)

    monkeypatch.setattr(Source, "list", counting)
    run_to_end(engine, "b1", source(folder))
    assert len(calls) == 1
    engine.begin("b1", source(folder), -1, "p9", LOADER)  # Run pressed again
    assert len(calls) == 2


def test_the_state_file_keeps_the_listing_and_the_output_folder(
    tmp_path: Path, engine: BatchEngine, folder: Path
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.writes_to("b1", tmp_path / "out" / "batch")
    saved = json.loads((tmp_path / "state" / "b1.json").read_text())
    assert saved["files"] == ["img1.png", "img2.png", "img3.png", "img10.png"]
    assert saved["output_folder"] == str(tmp_path / "out" / "batch")


def test_the_summary_names_the_folder_the_images_went_to(
    tmp_path: Path, engine: BatchEngine, folder: Path
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    assert engine.summary("b1").endswith(f"output: {tmp_path / 'out'}")  # nothing saved yet
    engine.writes_to("b1", tmp_path / "elsewhere" / "batch")
    run_to_end(engine, "b1", source(folder))
    assert engine.summary("b1").endswith(f"output: {tmp_path / 'elsewhere' / 'batch'}")
    restarted = BatchEngine(StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False)
    complete = restarted.begin("b1", source(folder), -1, "p9", LOADER)
    assert isinstance(complete, Halt)
    assert complete.message.endswith(f"output: {tmp_path / 'elsewhere' / 'batch'}")


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({}, True),
        ({"order": "name"}, False),
        ({"patterns": ("*.png",)}, False),
        ({"shard_index": 1, "shard_count": 2}, False),
        ({"limit": 2}, False),
    ],
    ids=["same", "order", "pattern", "shard", "limit"],
)
def test_batch_identity(folder: Path, change: dict[str, object], same: bool) -> None:
    key = workflow_key({"7": {"inputs": {"cursor": -1}}}, LOADER)
    assert (
        source_batch_id(source(folder), key) == source_batch_id(source(folder, **change), key)
    ) is same


def test_workflow_key_ignores_the_cursor_and_what_comfyui_adds() -> None:
    graph = {"7": {"inputs": {"cursor": -1, "folder": "a"}}, "9": {"inputs": {"seed": 1}}}
    advanced = {
        "7": {"inputs": {"cursor": 12, "folder": "a"}, "is_changed": ["f00d"]},
        "9": {"inputs": {"seed": 1}, "_meta": {"title": "renamed"}},
    }
    other = {"7": {"inputs": {"cursor": -1, "folder": "a"}}, "9": {"inputs": {"seed": 2}}}
    assert workflow_key(graph, "7") == workflow_key(advanced, "7") != workflow_key(other, "7")


def test_progress_eta_counts_only_this_runs_pace(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 of 4 done before a restart, 1 in this run's 10 s: 1 left at 10 s each, not 5 s."""
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    first = BatchEngine(StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False)
    first.begin("b1", source(folder), -1, "p0", LOADER)
    first.record("b1", 0, "saved", "o")
    first.record("b1", 1, "saved", "o")
    restarted = BatchEngine(StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False)
    restarted.begin("b1", source(folder), -1, "p2", LOADER)
    assert restarted.progress("b1", "img3.png") == "2/4 (50%) · img3.png · ETA --:--"
    restarted.record("b1", 2, "saved", "o")
    clock[0] += 10
    assert restarted.progress("b1", "img10.png") == "3/4 (75%) · img10.png · ETA 0:10"
    assert restarted.badge("b1") == "3/4 · ETA 0:10"


def test_control_stop_drops_the_queued_prompt_and_cuts_the_running_one(
    engine: BatchEngine, folder: Path
) -> None:
    dropped: list[str] = []
    interrupts: list[bool] = []
    control = BatchControl(
        engine,
        lambda: "p0",
        lambda pid: dropped.append(pid) or True,
        lambda: interrupts.append(True),
    )
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.queued("b1", "p1")
    status = control.stop("b1")
    assert status is not None and status["stopped"] is True
    assert dropped == ["p1"] and interrupts == [True]
    assert control.stop("nope") is None


def test_control_on_interrupt_stops_the_batch_of_the_interrupted_prompt(
    engine: BatchEngine, folder: Path
) -> None:
    control = BatchControl(engine, lambda: "p0", lambda pid: True, lambda: None)
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.begin("b2", source(folder, order="name"), -1, "other", LOADER)
    control.on_interrupt(None)
    assert engine.is_stopped("b1") and not engine.is_stopped("b2")


def test_badge_counts_up_then_says_done(engine: BatchEngine, folder: Path) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    assert engine.badge("b1") == "0/4 · ETA --:--"
    engine.record("b1", 0, "saved", "o")
    assert engine.badge("b1").startswith("1/4 · ETA ")
    engine.record("b1", 1, "skipped", "o", "output exists")
    engine.record("b1", 2, "unreadable", None, "truncated")
    engine.record("b1", 3, "saved", "o")
    engine.finish("b1")
    assert engine.badge("b1") == "done: 2 saved, 1 skipped, 1 failed"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """time.monotonic as the engine reads it: set it by hand."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def halt_of(
    engine: BatchEngine, folder: Path, situation: str, alive: set[str], clock: list[float]
) -> Item | Halt:
    """The situations in which a prompt processes no image, set up on batch "b1"."""
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "saved", "o")
    clock[0] += 10  # one image in 10 s: 3 left, ETA 0:30
    if situation == "busy":
        engine.queued("b1", "p1")
        alive.add("p1")
        return engine.begin("b1", source(folder), -1, "p2", LOADER)
    if situation == "stopped":
        engine.stop("b1")
        return engine.begin("b1", source(folder), 1, "p1", LOADER)
    if situation == "duplicate":
        return engine.begin("b1", source(folder), 0, "p1", LOADER)
    if situation == "past-the-end":
        return engine.begin("b1", source(folder), 4, "p1", LOADER)
    for index in (1, 2, 3):
        engine.record("b1", index, "skipped" if index == 3 else "saved", "o")
    return engine.begin("b1", source(folder), -1, "p1", LOADER)


@pytest.mark.parametrize(
    ("situation", "message", "state"),
    [
        ("unknown", "this batch is not running here (ComfyUI restarted?); run it again", "unknown"),
        ("busy", "already running (1/4 (25%) · ETA 0:30); not started twice", "busy"),
        ("stopped", "stopped at 1/4 (25%) · ETA 0:30", "stopped"),
        ("duplicate", "image 1 was already processed; duplicate skipped", "duplicate"),
        ("past-the-end", "image 5 was already processed; duplicate skipped", "duplicate"),
        (
            "complete",
            "already complete: 4 images in 0:00 · 3 processed, 1 skipped, 0 failed · output: OUT",
            "complete",
        ),
    ],
    ids=["unknown", "busy", "stopped", "duplicate", "past-the-end", "complete"],
)
def test_a_prompt_that_processes_no_image_says_why(
    tmp_path: Path,
    engine: BatchEngine,
    folder: Path,
    alive: set[str],
    clock: list[float],
    situation: str,
    message: str,
    state: str,
) -> None:
    if situation == "unknown":
        batch, halt = "unknown", engine.begin("unknown", source(folder), 2, "p", LOADER)
    else:
        batch, halt = "b1", halt_of(engine, folder, situation, alive, clock)
    expected = message.replace("OUT", str(tmp_path / "out"))
    assert halt == Halt(batch, expected, state)


def test_a_loop_step_claims_its_image_and_clears_the_queued_prompt(
    engine: BatchEngine, folder: Path
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "saved", "o")
    engine.queued("b1", "p1")
    assert engine.batches_of_prompt("p1") == ["b1"]
    claimed = engine.begin("b1", source(folder), 1, "p1", "8")
    assert claimed == Item("b1", 1, 4, "img2.png", folder / "img2.png")
    assert (engine.current("b1"), engine.running_prompt_id("b1"), engine.loader_of("b1")) == (
        1,
        "p1",
        "8",
    )
    assert engine.stop("b1") is None  # nothing queued any more


def test_a_halted_start_keeps_the_loader_it_had(engine: BatchEngine, folder: Path) -> None:
    run_to_end(engine, "b1", source(folder))
    engine.begin("b1", source(folder), -1, "p9", "other")
    assert engine.loader_of("b1") == ""  # the complete run claimed nothing


def test_batches_of_a_prompt(engine: BatchEngine, folder: Path) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.begin("b2", source(folder, order="name"), -1, "q0", LOADER)
    engine.queued("b2", "q1")
    assert engine.batches_of_prompt("p0") == ["b1"]
    assert engine.batches_of_prompt("q0") == engine.batches_of_prompt("q1") == ["b2"]
    assert engine.batches_of_prompt(None) == []
    assert engine.batches_of_prompt("zz") == []


def test_batches_in_flight_are_the_ones_with_a_live_prompt(
    engine: BatchEngine, folder: Path, alive: set[str]
) -> None:
    for batch, order in (("b1", "natural"), ("b2", "name"), ("b3", "modified"), ("b4", "shuffle")):
        engine.begin(batch, source(folder, order=order), -1, f"{batch}-run", LOADER)
    alive.update({"b1-run", "b2-next", "b3-run", "b4-run"})
    engine.queued("b2", "b2-next")
    engine.stop("b3")
    engine.finish("b4")
    assert engine.batches_in_flight() == ["b1", "b2"]  # b2: its queued next prompt
    alive.discard("b1-run")
    assert engine.batches_in_flight() == ["b2"]


def test_status_of_a_batch(
    tmp_path: Path, engine: BatchEngine, folder: Path, clock: list[float]
) -> None:
    assert engine.status("b1") is None
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "saved", "o")
    engine.record("b1", 1, "failed", None, "disk full")
    engine.record("b1", 1, "saved", "o")
    engine.record("b1", 2, "unreadable", None, "bad")
    clock[0] += 30
    assert engine.status("b1") == {
        "batch_id": "b1",
        "total": 4,
        "done": 3,
        "counts": {"saved": 2, "skipped": 0, "unreadable": 1, "failed": 0, "missing": 0},
        "stopped": False,
        "finished": False,
        "progress": "3/4 (75%) · ETA 0:10",
        "report": str(tmp_path / "out" / "batch_b1.jsonl"),
    }
    engine.stop("b1")
    status = engine.status("b1")
    assert status is not None and status["stopped"] is True and status["finished"] is False


def test_what_is_not_known_here(engine: BatchEngine) -> None:
    assert not engine.knows("b1")
    assert engine.is_stopped("b1")
    assert engine.stop("b1") is None
    assert engine.running_prompt_id("b1") is None


def test_finish_logs_the_summary_once(
    engine: BatchEngine, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    with caplog.at_level("INFO", logger="comfy_clientid_bridge"):
        first = engine.finish("b1")
        assert engine.finish("b1") == first
    done = [r.getMessage() for r in caplog.records if " done: " in r.getMessage()]
    assert done == [f"batch b1 done: {first}; report {engine.report_path('b1')}"]


def test_badge_of_a_stopped_batch(
    engine: BatchEngine, folder: Path, caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "saved", "o")
    with caplog.at_level("INFO", logger="comfy_clientid_bridge"):
        engine.stop("b1")
    assert caplog.messages == ["batch b1 stopped at 1/4 (25%) · ETA 0:00"]
    assert engine.badge("b1") == "stopped: 1/4"


def test_badge_at_the_last_image_says_done_before_finish(engine: BatchEngine, folder: Path) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    for index in range(4):
        engine.record("b1", index, "failed" if index == 3 else "saved", "o")
    assert engine.badge("b1") == "done: 3 saved, 0 skipped, 1 failed"


@pytest.mark.parametrize(
    ("change"),
    [
        {"recursive": True},
        {"seed": 7},
        {"start_index": 1},
        {"limit": 2},
        {"shard_index": 1, "shard_count": 2},
        {"shard_count": 2},
        {"order": "name"},
        {"patterns": ("*.png",)},
    ],
    ids=lambda change: "+".join(change),
)
def test_each_setting_of_the_source_is_part_of_the_batch(
    folder: Path, change: dict[str, object]
) -> None:
    key = workflow_key({"7": {"inputs": {"cursor": -1}}}, LOADER)
    assert source_batch_id(source(folder), key) != source_batch_id(source(folder, **change), key)


def test_the_folder_and_the_workflow_are_part_of_the_batch(folder: Path) -> None:
    key = workflow_key({"7": {"inputs": {"cursor": -1}}}, LOADER)
    batch = source_batch_id(source(folder), key)
    assert batch != source_batch_id(source(folder.parent), key)
    assert batch != source_batch_id(source(folder), key + "x")


@pytest.mark.parametrize(
    ("changed", "same"),
    [
        ({"9": {"class_type": "Other", "inputs": {"seed": 1}}}, False),
        ({"9": {"class_type": "Sampler", "inputs": {"seed": 1, "cursor": 5}}}, False),
        ({9: {"class_type": "Sampler", "inputs": {"seed": 1}}}, True),
        ({"8": "not a node"}, True),
        ({"8": {"class_type": "Note"}}, False),
    ],
    ids=["class-type", "other-nodes-cursor-counts", "int-node-id", "not-a-node", "no-inputs"],
)
def test_workflow_key_of_a_changed_graph(changed: dict[object, object], same: bool) -> None:
    graph: dict[object, object] = {
        "7": {"class_type": "Loader", "inputs": {"cursor": -1}},
        "9": {"class_type": "Sampler", "inputs": {"seed": 1}},
    }
    other = {**{k: v for k, v in graph.items() if str(k) not in map(str, changed)}, **changed}
    assert (workflow_key(graph, "7") == workflow_key(other, 7)) is same  # type: ignore[arg-type]


def test_the_output_folder_is_saved_once_per_change(
    engine: BatchEngine, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    saves: list[object] = []
    monkeypatch.setattr(engine.store, "save", saves.append)
    for _ in range(3):  # the saver tells it at every image
        engine.writes_to("b1", tmp_path / "o")
    engine.writes_to("b1", tmp_path / "p")
    assert len(saves) == 2


def test_the_summary_counts_unreadable_and_failed_as_failed(
    engine: BatchEngine, folder: Path, clock: list[float]
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "unreadable", None, "bad")
    engine.record("b1", 1, "failed", None, "disk full")
    engine.record("b1", 2, "failed", None, "disk full")
    assert engine.summary("b1").startswith("3 images in 0:00 · 0 processed, 0 skipped, 3 failed")


STABLE_GRAPH = {
    "7": {"class_type": "Loader", "inputs": {"cursor": 3, "folder": "a", "when": Path("/x")}},
    9: {"class_type": "Saver", "inputs": {"b": 1, "a": [7, 0]}},
}


@pytest.mark.parametrize(
    ("recursive", "expected"),
    [(True, "55abd2db8986cfa6"), (False, "d3b4f45350ee52ac")],
    ids=["recursive", "flat"],
)
def test_batch_ids_are_stable_across_versions(recursive: bool, expected: str) -> None:
    """Ids name the reports and state files on users' disks: a change here orphans every
    unfinished batch. The values are this version's, recorded when the test was written."""
    key = workflow_key(STABLE_GRAPH, "7")
    assert key == "4d13e37b74962467"
    stable = Source(Path("/in"), ("*.png",), recursive, "natural", 0, 1, 2, 0, 1)
    assert source_batch_id(stable, key) == expected


def test_workflow_key_of_a_loader_without_a_cursor() -> None:
    graph = {"7": {"class_type": "Loader", "inputs": {"folder": "a"}}}
    assert workflow_key(graph, "7") == workflow_key({"7": {**graph["7"]}}, "7")


def test_badge_when_nothing_failed(engine: BatchEngine, folder: Path) -> None:
    run_to_end(engine, "b1", source(folder))
    assert engine.badge("b1") == "done: 4 saved, 0 skipped"


def test_shuffle_follows_its_seed(folder: Path) -> None:
    for number in range(20):
        (folder / f"more{number}.png").write_bytes(b"x")
    orders = {seed: source(folder, order="shuffle", seed=seed).list() for seed in (1, 2)}
    assert orders[1] != orders[2]
    assert orders[1] == source(folder, order="shuffle", seed=1).list()
    assert sorted(orders[1]) == sorted(orders[2])


def test_the_process_engine_lives_in_comfyuis_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = object()
    alive_in_comfy = {(server, "p1")}
    monkeypatch.setattr(engine_module, "_engine", None)
    monkeypatch.setattr(internals, "user_directory", lambda: tmp_path / "user")
    monkeypatch.setattr(internals, "output_directory", lambda: tmp_path / "output")
    monkeypatch.setattr(internals, "prompt_server", lambda: server)
    monkeypatch.setattr(
        internals, "is_prompt_alive", lambda srv, prompt_id: (srv, prompt_id) in alive_in_comfy
    )
    made = batch_engine()
    assert batch_engine() is made  # one per process
    assert made.store.root == tmp_path / "user" / "clientid_bridge" / "batches"
    assert made.report_dir == tmp_path / "output"
    assert made.is_alive("p1") and not made.is_alive("p2")


@pytest.mark.parametrize(
    ("reported", "saving", "badge", "text", "counts"),
    [
        (0, 0, "0/4 · ETA --:--", "0/4 (0%) · img3.png · ETA --:--", (0, 4)),
        (1, 2, "3/4 · ETA 0:00", "3/4 (75%) · img3.png · ETA 0:00", (1, 4)),
        (3, 1, "4/4 · ETA 0:00", "4/4 (100%) · done in 0:00", (3, 4)),
        (2, 5, "4/4 · ETA 0:00", "4/4 (100%) · done in 0:00", (2, 4)),
        (4, 0, "done: 4 saved, 0 skipped", "4/4 (100%) · done in 0:00", (4, 4)),
    ],
    ids=["nothing-yet", "two-being-saved", "last-being-saved", "capped", "all-reported"],
)
def test_shown_counts_take_images_being_saved_as_processed(
    tmp_path: Path,
    folder: Path,
    clock: list[float],
    reported: int,
    saving: int,
    badge: str,
    text: str,
    counts: tuple[int, int],
) -> None:
    """With the pipeline, an image whose prompt ended is processed for the person watching;
    the counts clients act on, and the badge's "done", wait for its report line."""
    engine = BatchEngine(
        StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False, saving=lambda _: saving
    )
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    for index in range(reported):
        engine.record("b1", index, "saved", "o")
    assert engine.badge("b1") == badge
    assert engine.progress("b1", "img3.png") == text
    assert engine.done_of_total("b1") == counts


def test_a_stopped_batch_shows_its_images_being_saved(
    tmp_path: Path, folder: Path, clock: list[float]
) -> None:
    engine = BatchEngine(
        StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False, saving=lambda _: 2
    )
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.record("b1", 0, "saved", "o")
    engine.stop("b1")
    assert engine.badge("b1") == "stopped: 3/4"


@pytest.mark.parametrize(
    ("let_go", "claims"),
    [(True, True), (False, False)],
    ids=["batch-next-let-it-go", "the-previous-prompt-never-ended"],
)
def test_a_prompt_queued_ahead_loads_only_once_let_go(
    engine: BatchEngine, folder: Path, let_go: bool, claims: bool
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.queue_ahead("b1", 1)
    if let_go:
        engine.let_go("b1", 1)
    claimed = engine.begin("b1", source(folder), 1, "p1", LOADER)
    assert isinstance(claimed, Item) is claims
    assert engine.is_stopped("b1") is not claims
    if not claims:
        assert claimed == Halt(
            "b1",
            "stopped at 0/4 (0%) · ETA --:--: the previous image's prompt did not end",
            "stopped",
        )


def test_letting_go_another_image_than_the_one_queued_ahead_does_not_count(
    engine: BatchEngine, folder: Path
) -> None:
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.queue_ahead("b1", 2)
    engine.let_go("b1", 1)
    assert engine.begin("b1", source(folder), 2, "p2", LOADER).state == "stopped"  # type: ignore[union-attr]


def test_a_loop_step_ends_what_was_queued_ahead(engine: BatchEngine, folder: Path) -> None:
    """Once a step claimed its image, a later step of the same image is no longer "ahead"."""
    engine.begin("b1", source(folder), -1, "p0", LOADER)
    engine.queue_ahead("b1", 1)
    engine.let_go("b1", 1)
    engine.begin("b1", source(folder), 1, "p1", LOADER)
    engine.queue_ahead("b1", 2)
    engine.let_go("b1", 2)
    assert isinstance(engine.begin("b1", source(folder), 2, "p2", LOADER), Item)
    engine.queue_ahead("b1", 3)  # its prompt fails: the next one stops the batch
    assert engine.begin("b1", source(folder), 3, "p3", LOADER).state == "stopped"  # type: ignore[union-attr]
