"""The runner's SQLite ledger: what a second run of the same command reads."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_clientid_bridge.tools.ledger import Ledger, LedgerBusy, write_report_file


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(tmp_path / "state" / "batch.sqlite")
    yield opened
    opened.close()


def test_a_new_listing_becomes_pending_rows_in_its_order(ledger: Ledger) -> None:
    assert ledger.sync(["b.png", "a.png"]) == 2
    assert [ledger.source(idx) for idx in ledger.todo()] == ["b.png", "a.png"]
    assert ledger.counts() == {"pending": 2, "leased": 0, "done": 0, "failed": 0}


def test_a_second_run_sees_what_the_first_did(tmp_path: Path) -> None:
    path = tmp_path / "batch.sqlite"
    first = Ledger(path)
    first.sync(["a.png", "b.png", "c.png", "d.png"])
    a, b, c, d = first.todo()
    first.lease(a, "s1", 1, "p1")
    first.done(a, "s1", 1, ["a_out.png"], "saved")
    first.lease(b, "s2", 2, "p2")
    first.failed(c, "s1", "boom")
    first.close()  # or killed: each change was committed on its own

    again = Ledger(path)
    assert again.sync(["a.png", "b.png", "c.png", "d.png", "e.png"]) == 1
    assert [again.source(idx) for idx in again.todo()] == ["c.png", "d.png", "e.png"]
    [leased] = again.leased()
    assert (leased.source, leased.server, leased.attempt, leased.prompt_id) == (
        "b.png",
        "s2",
        2,
        "p2",
    )
    assert again.max_attempt() == 2
    again.close()


def test_files_no_longer_listed_are_not_worked_on_nor_reported(ledger: Ledger) -> None:
    ledger.sync(["a.png", "b.png"])
    ledger.sync(["b.png"])
    assert [ledger.source(idx) for idx in ledger.todo()] == ["b.png"]
    out = io.StringIO()
    ledger.write_report(out)
    assert [json.loads(line)["source"] for line in out.getvalue().splitlines()] == ["b.png"]


def test_the_report_names_the_server_outputs_and_moves(ledger: Ledger, tmp_path: Path) -> None:
    ledger.sync(["a.png", "b.png"])
    a, b = ledger.todo()
    ledger.moved(a, "s2 -> s1 (lost)")
    ledger.done(a, "s1", 3, ["batch/a_out.png"], "saved")
    path = tmp_path / "report.jsonl"
    write_report_file(ledger, path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {
            "source": "a.png",
            "status": "done",
            "server": "s1",
            "outputs": ["batch/a_out.png"],
            "note": "saved",
            "moved": "s2 -> s1 (lost)",
        },
        {
            "source": "b.png",
            "status": "pending",
            "server": None,
            "outputs": [],
            "note": None,
            "moved": None,
        },
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_returned_image_is_pending_again(ledger: Ledger) -> None:
    ledger.sync(["a.png"])
    [a] = ledger.todo()
    ledger.lease(a, "s1", 1, "p1")
    assert list(ledger.todo()) == []
    ledger.returned(a)
    assert list(ledger.todo()) == [a]


def test_meta_values_are_kept(ledger: Ledger) -> None:
    assert ledger.get("client_id http://s1") is None
    ledger.put("client_id http://s1", "abc")
    ledger.put("client_id http://s1", "def")
    assert ledger.get("client_id http://s1") == "def"


def test_a_second_runner_on_the_same_ledger_is_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerBusy, match="another runner is using"):
        Ledger(ledger.path)


def test_the_ledger_is_in_wal_mode(ledger: Ledger) -> None:
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_changes_reach_the_file_at_a_flush(ledger: Ledger) -> None:
    ledger.sync(["a.png"])
    [a] = ledger.todo()
    ledger.lease(a, "s1", 1, "p1")
    reader = sqlite3.connect(ledger.path)
    status = "SELECT status FROM images WHERE idx = ?"
    assert reader.execute(status, (a,)).fetchone() == ("pending",)  # a kill now loses it
    ledger.flush()
    assert reader.execute(status, (a,)).fetchone() == ("leased",)
    reader.close()
