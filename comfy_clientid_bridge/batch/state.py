"""Resumable batch state and the per-image report, stored as crash-safe JSON files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .naming import atomic_write_bytes

logger = logging.getLogger(__name__)

# "unreadable" is final too: the same bytes would fail again. "failed" (a save error) is retried,
# and so is "missing" (a file gone from the folder), should it come back.
FINISHED_STATUSES = frozenset({"saved", "skipped", "unreadable"})
STATE_VERSION = 2
# Version 1 state files (which also held per-index progress, now read from the report) still
# give their listing; the id's own version stays 1 so unfinished batches keep their reports.
READABLE_STATE_VERSIONS = (1, 2)
_ID_VERSION = 1
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
        "v": _ID_VERSION,
        "folder": folder,
        "patterns": list(patterns),
        "order": order,
        "seed": seed,
        "workflow": workflow_key,
    }
    return hashlib.sha256(_dumps(canonical).encode("ascii")).hexdigest()[:16]


def _field(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"state field {key!r} is missing or not {kind.__name__}")
    return value


@dataclass
class BatchState:
    """What a batch keeps between runs: the folder's listing at its last run's start, and
    the folder its images were saved to. Which files are done is read from the report."""

    batch_id: str
    folder: str
    files: list[str]
    output_folder: str = ""

    def to_json(self) -> str:
        # Not dataclasses.asdict: it deep-copies the listing, a fifth of a Run's start at
        # 10,000 files.
        fields = {"batch_id": self.batch_id, "folder": self.folder, "files": self.files}
        return _dumps({"version": STATE_VERSION, **fields, "output_folder": self.output_folder})

    @classmethod
    def from_json(cls, text: str) -> BatchState:
        """The state saved by to_json (or by version 1); ValueError for anything else."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") not in READABLE_STATE_VERSIONS:
            raise ValueError(f"not a batch state file of version {STATE_VERSION}")
        files = _field(data, "files", list)
        if not all(isinstance(name, str) for name in files):
            raise ValueError("state field 'files' must be a list of strings")
        output_folder = data.get("output_folder", "")
        if not isinstance(output_folder, str):
            raise ValueError("state field 'output_folder' must be a string")
        return cls(
            batch_id=_field(data, "batch_id", str),
            folder=_field(data, "folder", str),
            files=files,
            output_folder=output_folder,
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


class ReportWriter:
    """Appends one JSON line per input to a report file, durable line by line.

    The file is opened per line: each image runs in its own ComfyUI prompt, so there is
    no moment at which a long-lived handle could be closed reliably.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(
        self,
        index: int | None,
        source: str,
        output: str | None,
        status: str,
        error: str | None = None,
    ) -> None:
        """`index` is the file's place in its run's listing; None for a file not listed."""
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


def last_status(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """source -> status of its last record: a report's progress, keyed by the file's path
    relative to the folder (so a listing that gained or lost files since still matches)."""
    statuses: dict[str, str] = {}
    for record in records:
        source, status = record.get("source"), record.get("status")
        if isinstance(source, str) and isinstance(status, str):
            statuses[source] = status
    return statuses


def first_unfinished(files: Sequence[str], done: Mapping[str, str]) -> int | None:
    """The index of the first file not yet saved, skipped or found unreadable."""
    for index, source in enumerate(files):
        if done.get(source) not in FINISHED_STATUSES:
            return index
    return None
