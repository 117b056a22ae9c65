"""What the flowing runner shows: a plain line per event on stderr, or JSON lines on stdout."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # imported when a bar is drawn: a pipe's run starts without it
    from tqdm import tqdm


class FlowView:
    """Plain lines on `out` (on a terminal, a tqdm bar with the events above it); with
    `data`, one JSON object per event there as well."""

    def __init__(self, out: TextIO | None = None, data: TextIO | None = None) -> None:
        self.out = sys.stderr if out is None else out
        self.data = data
        self.total = 0
        self.done = 0
        self.start = time.monotonic()
        self.by_server: Counter[str] = Counter()
        self.bar: tqdm[Any] | None = None

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.out)
            return
        self.out.write(text + "\n")
        self.out.flush()

    def _event(self, event: str, **fields: Any) -> None:
        if self.data is not None:
            record = {"event": event, **fields}
            self.data.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.data.flush()

    def started(self, total: int, done_before: int, servers: Sequence[str], ledger: str) -> None:
        self.total, self.done, self.start = total, done_before, time.monotonic()
        before = f", {done_before} done before" if done_before else ""
        self._line(f"{total} images{before}; servers: {', '.join(servers)}; ledger: {ledger}")
        self._event("start", total=total, done_before=done_before, servers=list(servers))
        if self.out.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=done_before,
                unit="img",
                file=self.out,
                dynamic_ncols=True,
                smoothing=0,
                mininterval=0,
            )

    def server(self, name: str, state: str, why: str = "") -> None:
        self._line(f"{name}: {state}" + (f" ({why})" if why else ""))
        self._event("server", server=name, state=state, why=why or None)

    def finished(self, source: str, server: str, outcome: str, note: str) -> None:
        if outcome != "failed":
            self.done += 1
            self.by_server[server] += 1
        elapsed = time.monotonic() - self.start
        late = " (late finish, accepted)" if outcome == "late" else ""
        if self.bar is None:
            self._line(
                f"[{self.done}/{self.total}] {source} <- {server}: {note}{late} ({elapsed:.1f} s)"
            )
        else:  # the bar counts; only what went wrong or late is a line of its own
            self.bar.update(0 if outcome == "failed" else 1)
            self.bar.set_postfix_str(f"{source} <- {server}", refresh=True)
            if outcome == "failed" or late:
                self._line(f"{source} <- {server}: {note}{late}")
        self._event(
            "image",
            source=source,
            server=server,
            outcome=outcome,
            note=note,
            elapsed=round(elapsed, 3),
        )

    def taken_back(self, source: str, server: str) -> None:
        self._line(f"{source}: taken back from {server}")
        self._event("moved", source=source, server=server)

    def note(self, message: str) -> None:
        self._line(message)
        self._event("note", message=message)

    def error(self, message: str) -> None:
        self.close()
        self._line(f"batch: {message}")
        self._event("error", message=message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(
        self,
        status: int,
        counts: dict[str, int],
        moves: Sequence[str],
        duplicates: Sequence[str],
        report: str,
        uploads: Sequence[str] = (),
    ) -> None:
        self.close()
        for server, count in sorted(self.by_server.items()):
            self._line(f"{server}: {count} images this run")
        for move in moves:
            self._line(f"moved: {move}")
        for duplicate in duplicates:
            self._line(f"discarded: {duplicate}")
        if uploads:
            self._line(f"images uploaded to: {', '.join(uploads)}")
        self._line(f"report: {report}")
        left = counts["pending"] + counts["leased"]
        tail = f", {counts['failed']} failed" if counts["failed"] else ""
        tail += f", {left} not done" if left else ""
        total = sum(counts.values())
        self._line(f"result: {counts['done']}/{total} images{tail} (exit {status})")
        self._event(
            "summary",
            exit=status,
            counts=counts,
            servers=dict(self.by_server),
            moves=list(moves),
            discarded=list(duplicates),
            uploads=list(uploads),
            report=report,
        )
