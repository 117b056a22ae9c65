"""The runner's ledger: one SQLite row per image (what became of it, on which server), so
the same command run again does only the rest."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

# pending: not done yet; leased: a server has (or had, if the runner died) a prompt for it;
# done: accepted; failed: the workflow failed on it (tried again on the next run).
STATUSES = ("pending", "leased", "done", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    idx INTEGER PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    listed INTEGER NOT NULL DEFAULT 1,
    status TEXT NOT NULL DEFAULT 'pending',
    server TEXT,
    attempt INTEGER,
    prompt_id TEXT,
    outputs TEXT,
    note TEXT,
    moves TEXT,
    updated REAL
);
CREATE INDEX IF NOT EXISTS images_status ON images (status, listed);
"""


class LedgerBusy(Exception):
    """Another runner has this ledger open."""


@dataclass(frozen=True)
class Row:
    idx: int
    source: str
    status: str
    server: str | None
    attempt: int | None
    prompt_id: str | None
    outputs: list[str]
    note: str | None
    moves: str | None


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = _exclusive_lock(path.with_name(path.name + ".lock"))
        # isolation_level=None: each statement commits at once (WAL makes that cheap), so a
        # killed runner loses nothing it was told.
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL survives a crash of this process; only a power cut may lose the last
        # commits, which then run again (the servers' own reports skip them).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._writes: list[tuple[str, tuple[Any, ...]]] = []

    def close(self) -> None:
        self.flush()
        self.db.close()
        self._lock.close()

    def sync(self, sources: Sequence[str]) -> int:
        """Rows for the folder's listing, in its order; returns how many were new. Rows of
        files no longer listed stay (their history) but are not worked on."""
        before = self.count()
        self.db.execute("BEGIN")
        self.db.execute("UPDATE images SET listed = 0")
        self.db.executemany(
            "INSERT INTO images (source) VALUES (?) ON CONFLICT (source) DO UPDATE SET listed = 1",
            ((source,) for source in sources),
        )
        self.db.execute("COMMIT")
        return self.count() - before

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM images").fetchone()[0])

    def todo(self) -> Iterator[int]:
        """Listed images not done and not leased, in listing order."""
        self.flush()
        cursor = self.db.execute(
            "SELECT idx FROM images WHERE listed = 1 AND status IN ('pending', 'failed') "
            "ORDER BY idx"
        )
        return (int(idx) for (idx,) in cursor)

    def leased(self) -> list[Row]:
        """Images a server had when the last run ended: perhaps still running there."""
        self.flush()
        return self._rows("WHERE listed = 1 AND status = 'leased' ORDER BY idx")

    def source(self, idx: int) -> str:
        return str(self.db.execute("SELECT source FROM images WHERE idx = ?", (idx,)).fetchone()[0])

    def max_attempt(self) -> int:
        self.flush()
        return int(self.db.execute("SELECT coalesce(max(attempt), 0) FROM images").fetchone()[0])

    def lease(self, idx: int, server: str, attempt: int, prompt_id: str) -> None:
        self._set(idx, status="leased", server=server, attempt=attempt, prompt_id=prompt_id)

    def done(self, idx: int, server: str, attempt: int, outputs: list[str], note: str) -> None:
        self._set(
            idx,
            status="done",
            server=server,
            attempt=attempt,
            outputs=json.dumps(outputs),
            note=note,
        )

    def failed(self, idx: int, server: str, note: str) -> None:
        self._set(idx, status="failed", server=server, note=note)

    def returned(self, idx: int) -> None:
        self._set(idx, status="pending", server=None, prompt_id=None)

    def moved(self, idx: int, text: str) -> None:
        statement = "UPDATE images SET moves = coalesce(moves || '; ', '') || ? WHERE idx = ?"
        self._writes.append((statement, (text, idx)))

    def _set(self, idx: int, **values: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in values)
        statement = f"UPDATE images SET {columns}, updated = ? WHERE idx = ?"  # noqa: S608
        self._writes.append((statement, (*values.values(), time.time(), idx)))

    def flush(self) -> None:
        """Commits the changes made since the last flush, in one transaction (a commit per
        change costs more than the rest of an image's hand-out together)."""
        if not self._writes:
            return
        writes, self._writes = self._writes, []
        self.db.execute("BEGIN")
        for statement, values in writes:
            self.db.execute(statement, values)
        self.db.execute("COMMIT")

    @property
    def unflushed(self) -> int:
        return len(self._writes)

    def counts(self) -> dict[str, int]:
        self.flush()
        found = dict(
            self.db.execute(
                "SELECT status, count(*) FROM images WHERE listed = 1 GROUP BY status"
            ).fetchall()
        )
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _rows(self, where: str) -> list[Row]:
        cursor = self.db.execute(
            "SELECT idx, source, status, server, attempt, prompt_id, outputs, note, moves "
            f"FROM images {where}"  # noqa: S608 (our own clauses)
        )
        return [_row(values) for values in cursor]

    def write_report(self, out: TextIO) -> None:
        """One JSON line per listed image: its source, what became of it, which server."""
        self.flush()
        cursor = self.db.execute(
            "SELECT idx, source, status, server, attempt, prompt_id, outputs, note, moves "
            "FROM images WHERE listed = 1 ORDER BY idx"
        )
        for values in cursor:
            row = _row(values)
            line: dict[str, Any] = {"source": row.source, "status": row.status}
            line.update(server=row.server, outputs=row.outputs, note=row.note, moved=row.moves)
            out.write(json.dumps(line, separators=(",", ":")) + "\n")


def _row(values: Sequence[Any]) -> Row:
    idx, source, status, server, attempt, prompt_id, outputs, note, moves = values
    return Row(
        int(idx),
        str(source),
        str(status),
        server,
        attempt,
        prompt_id,
        json.loads(outputs) if outputs else [],
        note,
        moves,
    )


class _Lock:
    def __init__(self, handle: TextIO) -> None:
        self.handle = handle

    def close(self) -> None:
        self.handle.close()


def _exclusive_lock(path: Path) -> _Lock:
    """One runner per ledger: a second one would hand out the same images."""
    handle = path.open("a")
    try:
        import fcntl
    except ImportError:  # Windows: no lock; documented
        return _Lock(handle)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise LedgerBusy(f"another runner is using {path.with_suffix('')}") from None
    return _Lock(handle)


def write_report_file(ledger: Ledger, path: Path) -> None:
    """The report, replaced whole (never half-written)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("w", encoding="utf-8") as out:
            ledger.write_report(out)
        os.replace(temp, path)
    finally:
        with suppress(FileNotFoundError):
            temp.unlink()
