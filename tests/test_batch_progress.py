"""Tests for the progress, ETA and summary lines shown while a batch runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_clientid_bridge.batch.progress import format_eta, progress_text, summary_text


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "--:--"),
        (-1.0, "--:--"),
        (float("nan"), "--:--"),
        (float("inf"), "--:--"),
        (0.0, "0:00"),
        (59.4, "0:59"),
        (59.6, "1:00"),
        (190.0, "3:10"),
        (3599.4, "59:59"),
        (3600.0, "1:00:00"),
        (3723.0, "1:02:03"),
        (100 * 3600.0, "100:00:00"),
    ],
    ids=[
        "unknown",
        "negative",
        "nan",
        "infinite",
        "zero",
        "rounds-down",
        "rounds-up",
        "minutes",
        "just-under-an-hour",
        "one-hour",
        "hours",
        "many-hours",
    ],
)
def test_format_eta(seconds: float | None, expected: str) -> None:
    assert format_eta(seconds) == expected


@pytest.mark.parametrize(
    ("done", "total", "name", "elapsed", "expected"),
    [
        (12, 240, "img_012.jpg", 10.0, "12/240 (5%) · img_012.jpg · ETA 3:10"),
        (0, 240, "-rf.png", 0.0, "0/240 (0%) · -rf.png · ETA --:--"),
        (239, 240, "my photo.png", 239.0, "239/240 (99%) · my photo.png · ETA 0:01"),
        (1, 3, "", 2.0, "1/3 (33%) · ETA 0:04"),
        (2, 3, "東京.webp", 7200.0, "2/3 (66%) · 東京.webp · ETA 1:00:00"),
        (240, 240, "img_240.jpg", 754.0, "240/240 (100%) · done in 12:34"),
        (0, 0, "", 0.0, "0/0 (100%) · done in 0:00"),
    ],
    ids=[
        "example",
        "nothing-done-yet",
        "percent-floored",
        "no-name",
        "hours",
        "finished",
        "empty-batch",
    ],
)
def test_progress_text(done: int, total: int, name: str, elapsed: float, expected: str) -> None:
    assert progress_text(done, total, name, elapsed) == expected


@pytest.mark.parametrize(
    ("done", "total"), [(-1, 5), (6, 5), (0, -1)], ids=["negative", "past-total", "bad-total"]
)
def test_progress_text_rejects_impossible_counts(done: int, total: int) -> None:
    with pytest.raises(ValueError, match=f"done={done}, total={total}"):
        progress_text(done, total, "x.png", 1.0)


@pytest.mark.parametrize(
    ("counts", "elapsed", "output_dir", "expected"),
    [
        (
            (238, 1, 1),
            754.0,
            "/out/my run",
            "240 images in 12:34 · 238 processed, 1 skipped, 1 failed · output: /out/my run",
        ),
        (
            (1, 0, 0),
            3.0,
            Path("out"),
            "1 image in 0:03 · 1 processed, 0 skipped, 0 failed · output: out",
        ),
        ((0, 0, 0), 0.0, "", "0 images in 0:00 · 0 processed, 0 skipped, 0 failed · output: "),
    ],
    ids=["mixed", "one-image-path", "nothing"],
)
def test_summary_text(
    counts: tuple[int, int, int], elapsed: float, output_dir: str | Path, expected: str
) -> None:
    assert summary_text(*counts, elapsed, output_dir) == expected
