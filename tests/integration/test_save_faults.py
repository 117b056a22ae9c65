"""A full disk or a read-only output folder: a clear error, the batch stops, no false "saved"."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from integration.support import comfy_fixture
from PIL import Image

from comfy_clientid_bridge.batch.pipeline import SAVES_IN_FLIGHT
from comfy_clientid_bridge.batch.state import read_report
from comfy_clientid_bridge.tools.demo import post, wait_idle
from comfy_clientid_bridge.tools.launcher import REPO, Comfy, Tab

pytestmark = pytest.mark.integration


comfy = comfy_fixture(REPO)


@pytest.fixture(params=["disk-full", "read-only"])
def bad_folder(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A 1 MB tmpfs (too small for one image), or one mounted read-only."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    mount_tmpfs(mount, "size=1m" + (",ro" if request.param == "read-only" else ""))
    try:
        yield request.param, mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


async def test_a_save_that_fails_stops_the_batch_with_a_clear_error(
    comfy: Comfy, tmp_path: Path, bad_folder: tuple[str, Path]
) -> None:
    kind, mount = bad_folder
    stem = f"{kind}{uuid.uuid4().hex[:6]}x"  # this try's own: a rerun finds only its report
    folder = tmp_path / f"in-{kind}"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for number in range(4):
        pixels = rng.integers(0, 255, (900, 900, 3), dtype=np.uint8)  # 2.4 MB as PNG
        Image.fromarray(pixels).save(folder / f"{stem}{number}.png", compress_level=0)
    graph = json.loads((REPO / "examples" / "batch_folder.api.json").read_text())
    graph["1"]["inputs"].update(folder=str(folder))
    graph["2"]["inputs"].update(output_folder=str(mount), subfolder="out")
    async with aiohttp.ClientSession() as session:
        tab = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listener = asyncio.create_task(tab.listen())
        await post(session, comfy.url, {"prompt": graph, "client_id": tab.client_id})
        await wait_idle(session, comfy.url)
        await tab.close()
        await asyncio.gather(listener, return_exceptions=True)
    [error] = tab.of_type("execution_error")
    expected = "No space left on device" if kind == "disk-full" else "Read-only file system"
    assert "Batch Image Saver could not write" in error["exception_message"]
    assert expected in error["exception_message"]
    # The batch stopped at the first image: the save worker fails it while the loop runs on
    # to at most the images it holds (SAVES_IN_FLIGHT), which are dropped and never reported.
    assert len(tab.of_type("execution_start")) <= 1 + SAVES_IN_FLIGHT
    reports = [read_report(p) for p in comfy.output.glob("batch_*.jsonl")]
    [lines] = [r for r in reports if r and r[0]["source"].startswith(stem)]
    assert [line["status"] for line in lines] == ["failed"]
    assert not [p for p in mount.rglob("*") if p.is_file()]  # no partial or temp file left


def mount_tmpfs(mount: Path, options: str) -> None:
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs that holds two of the test's images and not three (300 pages; each ~121)."""
    mount = tmp_path / "small"
    mount.mkdir()
    mount_tmpfs(mount, "size=1200k")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


async def run_until_idle(comfy: Comfy, graph: dict[str, object]) -> Tab:
    async with aiohttp.ClientSession() as session:
        tab = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listener = asyncio.create_task(tab.listen())
        await post(session, comfy.url, {"prompt": graph, "client_id": tab.client_id})
        await wait_idle(session, comfy.url)
        await tab.close()
        await asyncio.gather(listener, return_exceptions=True)
    return tab


async def test_a_disk_that_fills_mid_batch_stops_it_and_the_next_run_saves_the_rest(
    comfy: Comfy, tmp_path: Path, small_disk: Path
) -> None:
    """Images 1-2 fit, image 3 fills the disk while the loop runs ahead: 1-2 saved, 3 failed,
    4-5 never reported; the next Run, with room again, saves 3-5, each once."""
    folder = tmp_path / "fills"
    folder.mkdir()
    stem = f"fill{uuid.uuid4().hex[:6]}x"  # this try's own: a rerun finds only its report
    rng = np.random.default_rng(6)
    for number in range(5):
        pixels = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)  # 480 KB as PNG
        Image.fromarray(pixels).save(folder / f"{stem}{number}.png", compress_level=0)
    graph = json.loads((REPO / "examples" / "batch_folder.api.json").read_text())
    graph["1"]["inputs"].update(folder=str(folder))
    graph["2"]["inputs"].update(output_folder=str(small_disk), subfolder="", existing="increment")
    tab = await run_until_idle(comfy, graph)
    [error] = tab.of_type("execution_error")
    assert "Batch Image Saver could not write" in error["exception_message"]
    assert f"{stem}2_out.png" in error["exception_message"]
    assert "No space left on device" in error["exception_message"]
    [report] = [p for p in comfy.output.glob("batch_*.jsonl") if f"{stem}0" in p.read_text()]
    statuses = [(line["source"], line["status"]) for line in read_report(report)]
    assert statuses == [
        (f"{stem}{n}.png", status) for n, status in enumerate(("saved", "saved", "failed"))
    ]
    assert sorted(p.name for p in small_disk.iterdir()) == [f"{stem}0_out.png", f"{stem}1_out.png"]

    remount = ["mount", "-o", "remount,size=8m", str(small_disk)]
    subprocess.run(remount, check=True, capture_output=True)
    await run_until_idle(comfy, graph)
    outputs = sorted(p.name for p in small_disk.iterdir())
    assert outputs == [f"{stem}{number}_out.png" for number in range(5)]  # no _1: none twice
    for name in outputs:
        with Image.open(small_disk / name) as image:
            image.load()
    last = {line["source"]: line["status"] for line in read_report(report)}
    assert set(last.values()) == {"saved"} and len(last) == 5
