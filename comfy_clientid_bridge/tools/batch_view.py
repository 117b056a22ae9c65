"""What the terminal runner shows: tqdm bars on a terminal, plain lines elsewhere, or JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO, cast

if TYPE_CHECKING:  # tqdm is imported where it is used: the flowing runner starts without it
    from tqdm import tqdm

    from .cli import Shard

UNIT = "img"
# Plain lines: tqdm's numbers (count, elapsed<remaining, rate) without the bar itself.
PLAIN_METER = "{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
# A server's line under the total bar: what matters most first, as a narrow terminal cuts
# the end; then its state and file (tqdm adds ", "). The small bar also makes tqdm < 4.69
# fit the line to the terminal (it trims only formats that have a bar).
SERVER_LINE = "{desc}: {n_fmt}/{total_fmt} |{bar:10}| {rate_fmt} ETA {remaining}{postfix}"


class View(Protocol):
    """Told of each step of a run; shows it somehow."""

    def started(self, shards: Sequence[Shard]) -> None: ...
    def queued(self, shard: Shard) -> None: ...
    def progress(self, shard: Shard) -> None: ...
    def ended(self, shard: Shard) -> None: ...
    def summary(self, shards: Sequence[Shard], status: int) -> None: ...
    def error(self, message: str) -> None: ...
    def close(self) -> None: ...


def make_view(*, as_json: bool, out: TextIO | None = None, data: TextIO | None = None) -> View:
    """JSON lines on stdout for scripts; else bars on a terminal, plain lines on a pipe."""
    out = sys.stderr if out is None else out
    if as_json:
        return JsonView(sys.stdout if data is None else data, out)
    return BarsView(out) if out.isatty() else PlainView(out)


def label(shard: Shard) -> str:
    """The server, and its shard when the folder is split: '127.0.0.1:8189 [2/2]'."""
    return shard.name if shard.count == 1 else f"{shard.name} [{shard.index + 1}/{shard.count}]"


def counts(shard: Shard) -> tuple[int, int | None, int]:
    """(done, total or None before the first image, done before this run)."""
    progress = shard.watch.progress
    if progress is None:
        return 0, None, 0
    before = shard.watch.done_before or 0
    return progress[0], progress[1], before


def totals(shards: Sequence[Shard]) -> tuple[int, int | None, int]:
    """Summed over the shards; the total is None until every shard knows its own."""
    each = [counts(shard) for shard in shards]
    known = [total for _, total, _ in each if total is not None]
    total = sum(known) if len(known) == len(each) else None
    return sum(done for done, _, _ in each), total, sum(before for _, _, before in each)


def meter(done: int, total: int | None, before: int, elapsed: float) -> str:
    """'3/10 [00:01<00:02, 2.50img/s]': the pace of this run only (a resume's earlier
    images took no time now)."""
    # tqdm takes None for an unknown total (its stubs say float only).
    unknown = cast(float, total)
    from tqdm import tqdm

    return tqdm.format_meter(
        done, unknown, elapsed, unit=UNIT, bar_format=PLAIN_METER, initial=before
    )


def shard_state(shard: Shard) -> str:
    """'running · img03.png', or how the shard ended."""
    state = shard.outcome
    if state == "running" and shard.watch.current:
        return f"{state} · {shard.watch.current}"
    return state


def plain_line(shard: Shard, shards: Sequence[Shard], elapsed: float) -> str:
    line = f"{label(shard)} {meter(*counts(shard), elapsed)} {shard_state(shard)}"
    if len(shards) > 1:
        done, total, _ = totals(shards)
        line += f" · all {done}/{'?' if total is None else total}"
    return line


def summary_lines(shards: Sequence[Shard], status: int) -> list[str]:
    """Per shard how it ended and where its report is (on that server's machine); then
    the totals and which shards are incomplete."""
    lines = []
    for shard in shards:
        lines.append(f"{label(shard)}: {shard.message()}")
        if shard.report:
            lines.append(f"  report ({shard.name}): {shard.report}")
    done, total, _ = totals(shards)
    behind = [label(shard) for shard in shards if not shard.ok]
    tail = f"; not finished: {', '.join(behind)}" if behind else ""
    lines.append(f"result: {done}/{'?' if total is None else total} images{tail} (exit {status})")
    return lines


def record(event: str, shard: Shard, **extra: Any) -> dict[str, Any]:
    done, total, before = counts(shard)
    return {
        "event": event,
        "server": shard.url,
        "shard": shard.index,
        "shards": shard.count,
        "batch_id": shard.watch.batch_id,
        "done": done,
        "total": total,
        **extra,
    }


class JsonView:
    """One JSON object per line on `data` (stdout), for scripts; errors also on `out`."""

    def __init__(self, data: TextIO, out: TextIO) -> None:
        self.data, self.out = data, out

    def _write(self, obj: dict[str, Any]) -> None:
        self.data.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.data.flush()

    def started(self, shards: Sequence[Shard]) -> None:
        self._write({"event": "start", "servers": [shard.url for shard in shards]})

    def queued(self, shard: Shard) -> None:
        self._write(record("queued", shard, prompt_id=shard.prompt_id))

    def progress(self, shard: Shard) -> None:
        self._write(record("progress", shard, file=shard.watch.current, state=shard.outcome))

    def ended(self, shard: Shard) -> None:
        extra = {"outcome": shard.outcome, "ok": shard.ok, "message": shard.message()}
        self._write(record("end", shard, failed=shard.failed_images, report=shard.report, **extra))

    def summary(self, shards: Sequence[Shard], status: int) -> None:
        done, total, _ = totals(shards)
        incomplete = [shard.url for shard in shards if not shard.ok]
        summary = {"event": "summary", "exit": status, "done": done, "total": total}
        self._write({**summary, "incomplete": incomplete})

    def error(self, message: str) -> None:
        self._write({"event": "error", "message": message})
        self.out.write(f"batch: {message}\n")

    def close(self) -> None:
        pass


class PlainView:
    """Not a terminal (a log, CI, a pipe): one line whenever a shard's count, state or image
    changes: a line per image even when the count of durable saves, which trails the image
    being processed, moves by two at once."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.shards: Sequence[Shard] = ()
        self.start = time.monotonic()
        self.shown: dict[int, tuple[int, str, str | None]] = {}

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def started(self, shards: Sequence[Shard]) -> None:
        self.shards, self.start = shards, time.monotonic()

    def queued(self, shard: Shard) -> None:
        self._line(f"{label(shard)} queued")

    def progress(self, shard: Shard) -> None:
        key = (counts(shard)[0], shard.outcome, shard.watch.current)
        if self.shown.get(shard.index) != key:
            self.shown[shard.index] = key
            self._line(plain_line(shard, self.shards, time.monotonic() - self.start))

    def ended(self, shard: Shard) -> None:
        self.progress(shard)

    def summary(self, shards: Sequence[Shard], status: int) -> None:
        for line in summary_lines(shards, status):
            self._line(line)

    def error(self, message: str) -> None:
        self._line(f"batch: {message}")

    def close(self) -> None:
        pass


class BarsView(PlainView):
    """A terminal: tqdm draws a bar for the total and, with several servers, one line per
    server (done, rate, state), redrawn in place and fitted to the terminal's width."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(out)
        self.total: tqdm[Any] | None = None
        self.bars: dict[int, tqdm[Any]] = {}

    def _bar(self, position: int, desc: str, bar_format: str | None = None) -> tqdm[Any]:
        from tqdm import tqdm

        return tqdm(
            total=None,
            desc=desc,
            bar_format=bar_format,
            unit=UNIT,
            file=self.out,
            position=position,
            dynamic_ncols=True,
            smoothing=0,  # the average over this run: images arrive one by one
            mininterval=0,
            leave=True,
        )

    def started(self, shards: Sequence[Shard]) -> None:
        super().started(shards)
        self.total = self._bar(0, "all" if len(shards) > 1 else label(shards[0]))
        if len(shards) > 1:
            self.bars = {
                shard.index: self._bar(shard.index + 1, label(shard), SERVER_LINE)
                for shard in shards
            }

    def queued(self, shard: Shard) -> None:
        self.progress(shard)

    def progress(self, shard: Shard) -> None:
        if self.total is None:
            return
        bar = self.bars.get(shard.index)
        if bar is not None:
            _show(bar, counts(shard), shard_state(shard))
        done, total, before = totals(self.shards)
        if len(self.shards) == 1:  # the file first: a narrow terminal cuts the line's end
            state = shard.watch.current if shard.outcome == "running" else shard.outcome
        else:
            state = f"{sum(s.outcome == 'running' for s in self.shards)} running"
        _show(self.total, (done, total, before), state)

    def summary(self, shards: Sequence[Shard], status: int) -> None:
        self.close()
        super().summary(shards, status)

    def error(self, message: str) -> None:
        self.close()
        super().error(message)

    def close(self) -> None:
        for bar in [*self.bars.values(), *([self.total] if self.total else [])][::-1]:
            bar.close()
        self.bars, self.total = {}, None


def _show(bar: tqdm[Any], numbers: tuple[int, int | None, int], state: str) -> None:
    done, total, before = numbers
    bar.total, bar.initial, bar.n = total, before, done
    bar.set_postfix_str(state, refresh=False)
    bar.refresh()
