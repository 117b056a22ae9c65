"""Human-readable progress, ETA and summary lines for a running batch."""

from __future__ import annotations

import math
import os

SEPARATOR = " · "
UNKNOWN_ETA = "--:--"


def format_eta(seconds: float | None) -> str:
    """'m:ss' below an hour, 'h:mm:ss' above, '--:--' when unknown or not a duration."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return UNKNOWN_ETA
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def _check_counts(done: int, total: int) -> None:
    if total < 0 or not 0 <= done <= total:
        raise ValueError(f"expected 0 <= done <= total; got done={done}, total={total}")


def eta_seconds(done: int, total: int, elapsed: float, *, done_before: int = 0) -> float | None:
    """Seconds left at this run's pace; None before this run has finished an image."""
    done_now = done - done_before
    return elapsed / done_now * (total - done) if done_now > 0 else None


def progress_text(
    done: int, total: int, current_name: str, elapsed: float, *, done_before: int = 0
) -> str:
    """'12/240 (5%) · img_012.jpg · ETA 3:10', or '240/240 (100%) · done in 12:34'.

    `elapsed` counts from this run's start; `done_before` images were finished before it
    (a resumed batch), so they say nothing about the pace.
    """
    _check_counts(done, total)
    if done == total:
        return f"{done}/{total} (100%){SEPARATOR}done in {format_eta(elapsed)}"
    percent = done * 100 // total
    eta = eta_seconds(done, total, elapsed, done_before=done_before)
    parts = [f"{done}/{total} ({percent}%)", current_name, f"ETA {format_eta(eta)}"]
    return SEPARATOR.join(part for part in parts if part)


def summary_text(
    processed: int,
    skipped: int,
    failed: int,
    elapsed: float,
    output_dir: str | os.PathLike[str],
    *,
    missing: int = 0,
) -> str:
    """One line for the end of a batch: counts, duration and where the results went.

    `missing` files left the folder before their turn; they are named, not counted as images.
    """
    total = processed + skipped + failed
    noun = "image" if total == 1 else "images"
    counts = f"{processed} processed, {skipped} skipped, {failed} failed"
    counts += f", {missing} missing" if missing else ""
    return SEPARATOR.join(
        [f"{total} {noun} in {format_eta(elapsed)}", counts, f"output: {os.fspath(output_dir)}"]
    )
