"""Tests for batch ids, the resumable state file and the per-image report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from comfy_clientid_bridge.batch.state import (
    BatchState,
    ReportWriter,
    StateStore,
    batch_id,
    first_unfinished,
    last_status,
    read_report,
)

BASE_ID_ARGS: dict[str, Any] = {
    "folder": "/data/in",
    "patterns": ("*.png", "*.jpg"),
    "order": "natural",
    "seed": 0,
    "workflow_key": "wf-a",
}
NASTY_FILES = ["-rf.png", "my photo.jpg", "ünï/東京.webp", "bad\udcff.png", "img10.png"]


def make_state(**changes: Any) -> BatchState:
    fields: dict[str, Any] = {
        "batch_id": "0123456789abcdef",
        "folder": "/data/ïn put",
        "files": list(NASTY_FILES),
        "output_folder": "/data/öut/batch",
    }
    return BatchState(**{**fields, **changes})


def test_batch_id_is_stable_across_versions() -> None:
    # Ids name state files on users' disks: a change here orphans every unfinished batch.
    # sha256 of {"folder":"/data/in","order":"natural","patterns":["*.png","*.jpg"],
    # "seed":0,"v":1,"workflow":"wf-a"}, checked by hand.
    assert batch_id(**BASE_ID_ARGS) == "95af510663d68d6f"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("folder", "/data/in2"),
        ("patterns", ("*.jpg", "*.png")),
        ("order", "shuffle"),
        ("seed", 1),
        ("workflow_key", "wf-b"),
    ],
    ids=["folder", "pattern-order", "order", "seed", "workflow"],
)
def test_batch_id_changes_with_each_input(field: str, value: object) -> None:
    changed = batch_id(**{**BASE_ID_ARGS, field: value})
    assert changed != batch_id(**BASE_ID_ARGS)
    assert len(changed) == 16 and int(changed, 16) >= 0


def test_batch_state_round_trips_nasty_names() -> None:
    state = make_state()
    restored = BatchState.from_json(state.to_json())
    assert restored == state
    assert restored.files == NASTY_FILES


def test_a_version_1_state_gives_its_listing() -> None:
    """Written before progress moved to the report: its per-index fields are not read."""
    old = {
        "version": 1,
        "batch_id": "0123456789abcdef",
        "folder": "/in",
        "files": ["a.png"],
        "next_index": 0,
        "done": {"0": "saved"},
        "started_at": 1.0,
        "updated_at": 2.0,
        "stopped": False,
    }
    assert BatchState.from_json(json.dumps(old)) == BatchState(
        "0123456789abcdef", "/in", ["a.png"], ""
    )


def test_batch_state_json_is_ascii() -> None:
    assert make_state().to_json().isascii()


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state dir")


def test_load_of_an_unknown_batch_is_none_without_warning(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    assert store.load("abc") is None
    assert caplog.records == []


def test_save_then_load(store: StateStore) -> None:
    state = make_state()
    store.save(state)
    assert store.load(state.batch_id) == state
    assert os.listdir(store.root) == [f"{state.batch_id}.json"]


def test_save_replaces_the_previous_state(store: StateStore) -> None:
    store.save(make_state())
    store.save(make_state(files=["new.png"]))
    loaded = store.load("0123456789abcdef")
    assert loaded is not None and loaded.files == ["new.png"]


def test_a_failed_save_keeps_the_previous_state(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save(make_state())

    def failing_replace(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store.save(make_state(files=["new.png"]))
    monkeypatch.undo()
    assert store.load("0123456789abcdef") == make_state()
    assert os.listdir(store.root) == ["0123456789abcdef.json"]


def valid_json(**changes: Any) -> str:
    data = json.loads(make_state().to_json())
    return json.dumps({**data, **changes})


@pytest.mark.parametrize(
    "content",
    [
        b"",
        valid_json().encode()[:40],
        b"\xff\xfe\x00garbage",
        b"[]",
        valid_json(version=99).encode(),
        valid_json(batch_id="fedcba9876543210").encode(),
        valid_json(folder=3).encode(),
        valid_json(files="a.png").encode(),
        valid_json(files=["a.png", 3]).encode(),
        valid_json(output_folder=None).encode(),
        valid_json(batch_id=None).encode(),
    ],
    ids=[
        "empty",
        "half-written",
        "binary",
        "not-an-object",
        "future-version",
        "other-batch",
        "folder-not-text",
        "files-not-a-list",
        "file-not-text",
        "output-not-text",
        "id-missing",
    ],
)
def test_a_bad_state_file_is_ignored_with_a_warning(
    store: StateStore, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store.root.mkdir()
    store.path_for("0123456789abcdef").write_bytes(content)
    assert store.load("0123456789abcdef") is None
    assert "batch state" in caplog.text


@pytest.mark.parametrize(
    "bad_id", ["", "../escape", "ABCDEF", "0123 4567", "abc\n", "a" * 65], ids=str.__repr__
)
def test_path_for_rejects_ids_that_are_not_hex(store: StateStore, bad_id: str) -> None:
    with pytest.raises(ValueError, match="batch id must be 1-64 lowercase hex digits"):
        store.path_for(bad_id)


RECORDS = [
    (0, "-rf.png", "out/-rf.png", "saved", None),
    (1, "my photo.jpg", None, "failed", "cannot read image my photo.jpg: truncated"),
    (2, "bad\udcff.png", "out/bad\udcff.png", "skipped", None),
]


def as_dicts(records: list[tuple[int, str, str | None, str, str | None]]) -> list[dict[str, Any]]:
    keys = ("index", "source", "output", "status", "error")
    return [dict(zip(keys, record, strict=True)) for record in records]


def test_report_round_trip(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path / "reports" / "report.jsonl")
    for record in RECORDS:
        writer.write(*record)
    assert read_report(writer.path) == as_dicts(RECORDS)
    assert len(writer.path.read_bytes().splitlines()) == len(RECORDS)


def test_report_fsyncs_every_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    writer = ReportWriter(tmp_path / "report.jsonl")
    writer.write(*RECORDS[0])
    writer.write(*RECORDS[1])
    assert len(synced) == 2


def test_read_report_skips_a_torn_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = ReportWriter(tmp_path / "report.jsonl")
    writer.write(*RECORDS[0])
    with writer.path.open("ab") as handle:
        handle.write(b'{"index": 1, "source": "my ph')
    assert read_report(writer.path) == as_dicts(RECORDS[:1])
    assert "line 2" in caplog.text


def test_writing_after_a_torn_line_starts_a_fresh_line(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path / "report.jsonl")
    writer.write(*RECORDS[0])
    with writer.path.open("ab") as handle:
        handle.write(b'{"index": 1, "sou')
    writer.write(*RECORDS[2])
    assert read_report(writer.path) == as_dicts([RECORDS[0], RECORDS[2]])


def test_read_report_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_report(tmp_path / "none.jsonl") == []


@pytest.mark.parametrize(
    ("done", "expected"),
    [
        ({}, 0),
        ({"a": "saved", "b": "skipped"}, 2),
        ({"a": "saved", "b": "failed", "c": "saved"}, 1),
        ({"a": "saved", "c": "saved"}, 1),
        ({"a": "saved", "b": "missing"}, 1),
        ({name: "saved" for name in "abcde"}, None),
        ({"a": "saved", "b": "saved", "c": "skipped", "d": "saved", "e": "running"}, 4),
        ({"b": "saved", "zz": "saved"}, 0),
    ],
    ids=[
        "fresh",
        "after-saved-and-skipped",
        "failed-is-retried",
        "gap",
        "missing-is-retried",
        "all-done",
        "unknown",
        "others-done",
    ],
)
def test_first_unfinished(done: dict[str, str], expected: int | None) -> None:
    assert first_unfinished(list("abcde"), done) == expected


def test_first_unfinished_of_an_empty_batch_is_none() -> None:
    assert first_unfinished([], {}) is None


def test_last_status_is_keyed_by_source_and_the_last_line_wins() -> None:
    records = [
        {"index": 0, "source": "a.png", "status": "failed"},
        {"index": 1, "source": "b.png", "status": "saved"},
        {"index": 0, "source": "a.png", "status": "saved"},
        {"index": None, "source": "gone.png", "status": "missing"},
        {"index": 3, "source": 7, "status": "saved"},
        {"index": 4, "source": "c.png"},
    ]
    assert last_status(records) == {"a.png": "saved", "b.png": "saved", "gone.png": "missing"}


def test_the_state_file_format() -> None:
    """What a user's disk holds: a change here needs a new STATE_VERSION."""
    state = BatchState("0123456789abcdef", "/in", ["a.png", "b/c.png"], "/out/batch")
    assert json.loads(state.to_json()) == {
        "version": 2,
        "batch_id": "0123456789abcdef",
        "folder": "/in",
        "files": ["a.png", "b/c.png"],
        "output_folder": "/out/batch",
    }
