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
    options = "size=1m" + (",ro" if request.param == "read-only" else "")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield request.param, mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


async def test_a_save_that_fails_stops_the_batch_with_a_clear_error(
    comfy: Comfy, tmp_path: Path, bad_folder: tuple[str, Path]
) -> None:
    kind, mount = bad_folder
    folder = tmp_path / f"in-{kind}"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for number in range(4):
        pixels = rng.integers(0, 255, (900, 900, 3), dtype=np.uint8)  # 2.4 MB as PNG
        Image.fromarray(pixels).save(folder / f"{kind}{number}.png", compress_level=0)
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
    assert len(tab.of_type("execution_start")) == 1  # the batch stopped at the first image
    reports = [read_report(p) for p in comfy.output.glob("batch_*.jsonl")]
    [lines] = [r for r in reports if r and r[0]["source"].startswith(kind)]
    assert [line["status"] for line in lines] == ["failed"]
    assert not [p for p in mount.rglob("*") if p.is_file()]  # no partial or temp file left
