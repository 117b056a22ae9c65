"""Resumable batch state and the per-image report, stored as crash-safe JSON files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .naming import atomic_write_bytes

logger = logging.getLogger(__name__)

# "unreadable" is final too: the same bytes would fail again. "failed" (a save error) is retried.
FINISHED_STATUSES = frozenset({"saved", "skipped", "unreadable"})
STATE_VERSION = 1
_BATCH_ID = re.compile(r"[0-9a-f]{1,64}")


def _dumps(value: object) -> str:
    # ensure_ascii: file names may hold lone surrogates (undecodable bytes on Linux),
    # which only survive a round trip through JSON as \udcxx escapes.
    return json.dumps(value, ensure_ascii=True, sort_keys=True, separators=(",", ":"))


def batch_id(
    folder: str, patterns: tuple[str, ...], order: str, seed: int, workflow_key: str
) -> str:
    """A short stable id for one batch: the same inputs give the same id on every run."""
    # "v" lets a future change of the canonical form start new ids instead of reusing old ones.
    canonical = {
        "v": STATE_VERSION,
        "folder": folder,
        "patterns": list(patterns),
        "order": order,
        "seed": seed,
        "workflow": workflow_key,
    }
    return hashlib.sha256(_dumps(canonical).encode("ascii")).hexdigest()[:16]


def _field(data: Mapping[str, Any], key: str, *kinds: type) -> Any:
    value = data.get(key)
    # bool is an int subclass, but "next_index": true is a corrupt file, not index 1.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(kind.__name__ for kind in kinds)
        raise ValueError(f"state field {key!r} is missing or not {expected}")
    return value


def _done_from_json(raw: Mapping[str, Any]) -> dict[int, str]:
    if not all(isinstance(status, str) for status in raw.values()):
        raise ValueError("state field 'done' must map indexes to status strings")
    return {int(index): status for index, status in raw.items()}


@dataclass
class BatchState:
    """Progress of one batch: which of its listed files have been handled, and how."""

    batch_id: str
    folder: str
    files: list[str]
    next_index: int = 0
    done: dict[int, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    stopped: bool = False

    def to_json(self) -> str:
        return _dumps({"version": STATE_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> BatchState:
        """The state saved by to_json; ValueError for anything else."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"not a batch state file of version {STATE_VERSION}")
        files = _field(data, "files", list)
        if not all(isinstance(name, str) for name in files):
            raise ValueError("state field 'files' must be a list of strings")
        return cls(
            batch_id=_field(data, "batch_id", str),
            folder=_field(data, "folder", str),
            files=files,
            next_index=_field(data, "next_index", int),
            done=_done_from_json(_field(data, "done", dict)),
            started_at=float(_field(data, "started_at", int, float)),
            updated_at=float(_field(data, "updated_at", int, float)),
            stopped=_field(data, "stopped", bool),
        )


class StateStore:
    """One JSON file per batch id under root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, batch_id: str) -> Path:
        if not _BATCH_ID.fullmatch(batch_id):
            raise ValueError(f"batch id must be 1-64 lowercase hex digits; got {batch_id!r}")
        return self.root / f"{batch_id}.json"

    def load(self, batch_id: str) -> BatchState | None:
        """The saved state, or None when there is none or it cannot be trusted."""
        path = self.path_for(batch_id)
        try:
            state = BatchState.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as error:
            # A bad state file must not stop a batch: starting over is the safe fallback.
            logger.warning("ignoring unreadable batch state %s: %s", path, error)
            return None
        if state.batch_id != batch_id:
            logger.warning("ignoring batch state %s: it belongs to %s", path, state.batch_id)
            return None
        return state

    def save(self, state: BatchState) -> None:
        path = self.path_for(state.batch_id)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, state.to_json().encode("ascii"))

    def delete(self, batch_id: str) -> None:
        self.path_for(batch_id).unlink(missing_ok=True)


class ReportWriter:
    """Appends one JSON line per input to a report file, durable line by line.

    The file is opened per line: each image runs in its own ComfyUI prompt, so there is
    no moment at which a long-lived handle could be closed reliably.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(
        self, index: int, source: str, output: str | None, status: str, error: str | None = None
    ) -> None:
        record = {"index": index, "source": source, "output": output, "status": status}
        line = _dumps({**record, "error": error}).encode("ascii") + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as handle:
            handle.write(_line_start(handle) + line)
            handle.flush()
            os.fsync(handle.fileno())


def _line_start(handle: BinaryIO) -> bytes:
    # After a crash mid-line, start on a fresh line so only the torn record is lost.
    if handle.seek(0, os.SEEK_END) == 0:
        return b""
    handle.seek(-1, os.SEEK_END)
    return b"" if handle.read(1) == b"\n" else b"\n"


def read_report(path: Path) -> list[dict[str, Any]]:
    """The records of a report file, skipping lines that are torn or not JSON objects."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif line.strip():
            logger.warning("skipping unreadable line %d of report %s", number, path)
    return records


def first_unfinished(state: BatchState) -> int | None:
    """The first index not yet saved or skipped, where a resumed batch carries on."""
    for index in range(len(state.files)):
        if state.done.get(index) not in FINISHED_STATUSES:
            return index
    return None
