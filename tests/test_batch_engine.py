"""The batch loop's bookkeeping: resume, new files, duplicates, stop, one listing per run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from comfy_clientid_bridge.batch.control import BatchControl
from comfy_clientid_bridge.batch.engine import (
    BatchEngine,
    Halt,
    Item,
    Source,
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
    assert len(read_report(engine.report_path("b1"))) == 4


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
    assert [(line["source"], line["index"]) for line in lines if line["status"] == "missing"] == [
        ("img2.png", None)
    ]
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
