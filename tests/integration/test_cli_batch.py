"""`python -m comfy_clientid_bridge batch` against a real ComfyUI."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from integration.support import comfy_fixture
from PIL import Image

from comfy_clientid_bridge.tools.launcher import REPO, Comfy

pytestmark = pytest.mark.integration
EXAMPLE = REPO / "examples" / "batch_folder.api.json"


comfy = comfy_fixture(REPO)


def images(folder: Path, count: int, size: int = 32, corrupt: bool = False) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(4)
    for number in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        # Named after the folder: every test writes into the example's one output subfolder.
        Image.fromarray(pixels).save(folder / f"{folder.name}{number:02}.png", compress_level=0)
    if corrupt:
        (folder / "zz_corrupt.png").write_bytes(b"not a png")
    return folder


def command(comfy: Comfy, folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "comfy_clientid_bridge",
        "batch",
        "--server",
        comfy.url,
        "--workflow",
        str(EXAMPLE),
        "--folder",
        str(folder),
    ]


def test_a_clean_folder_exits_zero(comfy: Comfy, tmp_path: Path) -> None:
    done = subprocess.run(
        command(comfy, images(tmp_path / "ok", 5)),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "result: done: 5 saved, 0 skipped" in done.stderr
    assert "5/5" in done.stderr or "4/5" in done.stderr  # the progress lines


def test_an_unreadable_image_exits_non_zero_with_the_summary(comfy: Comfy, tmp_path: Path) -> None:
    folder = images(tmp_path / "bad", 3, corrupt=True)
    done = subprocess.run(
        command(comfy, folder), capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 1
    assert "result: done: 3 saved, 0 skipped, 1 failed" in done.stderr
    assert "report: " in done.stderr


def test_ctrl_c_stops_the_batch_and_the_same_command_resumes(comfy: Comfy, tmp_path: Path) -> None:
    folder = images(tmp_path / "slow", 12, size=900)
    process = subprocess.Popen(command(comfy, folder), stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert process.stderr is not None
    for line in process.stderr:  # not a terminal: one line per image
        if line.startswith("[") and line.split("] ", 1)[1].startswith(("2/", "3/")):
            break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=60) == 130, rest
    assert "stopped" in rest
    time.sleep(1)
    saved = list((comfy.output / "batch").glob("slow*_out.png"))
    assert 2 <= len(saved) < 12
    resumed = subprocess.run(
        command(comfy, folder), capture_output=True, text=True, cwd=REPO, timeout=180
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "result: done: 12 saved" in resumed.stderr
