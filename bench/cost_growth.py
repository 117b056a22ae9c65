"""Per-iteration cost of the batch loop at 100 and at 10,000 files, side by side.

Run: python bench/cost_growth.py   (needs a ComfyUI checkout; see README)
One real ComfyUI with this package; folders of 64x64 PNGs, so the loop itself dominates.
Each round runs the example workflow on one folder and stops the batch after 60 images.
The per-iteration time counts every iteration, the first one included (it lists the
folder, once per run): from the server timestamp of the tab's first `execution_start` to
that of its 60th `execution_success`, divided by 60. The first iteration is also shown on
its own. One warm-up round first (not counted: the server's first prompts load its caches),
then ROUNDS rounds alternating which folder goes first (A B, B A, ...); the ratio is the
median of the rounds' own 10,000/100 ratios.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_clientid_bridge.tools.demo import post, wait_idle  # noqa: E402
from comfy_clientid_bridge.tools.launcher import REPO, Tab, find_comfyui, running_comfyui  # noqa: E402

SIZES = (100, 10_000)
ITERATIONS = 60
ROUNDS = 5


def make_folder(root: Path, count: int) -> Path:
    folder = root / f"f{count}"
    folder.mkdir()
    tile = Image.new("RGB", (64, 64), (90, 120, 150))
    tile.save(folder / "img0.png")
    data = (folder / "img0.png").read_bytes()
    for number in range(1, count):
        (folder / f"img{number}.png").write_bytes(data)
    return folder


def graph(folder: Path, tag: str) -> dict[str, Any]:
    workflow = json.loads((REPO / "examples" / "batch_folder.api.json").read_text())
    workflow["1"]["inputs"].update(folder=str(folder))
    workflow["2"]["inputs"].update(subfolder=tag, compress_level=1)
    return workflow


async def one_round(url: str, folder: Path, tag: str) -> tuple[float, float]:
    """(mean seconds per iteration over all ITERATIONS, seconds of the first iteration)."""
    async with aiohttp.ClientSession() as session:
        tab = await Tab(session, url, uuid.uuid4().hex).open()
        listener = asyncio.create_task(tab.listen())
        await post(session, url, {"prompt": graph(folder, tag), "client_id": tab.client_id})
        while len(tab.of_type("execution_success")) < ITERATIONS:
            await asyncio.sleep(0.01)
        # The server's own timestamps (ms): no client polling in the measurement.
        start = tab.of_type("execution_start")[0]["timestamp"] / 1000
        stamps = [e["timestamp"] / 1000 for e in tab.of_type("execution_success")[:ITERATIONS]]
        loader = next(e for e in tab.of_type("executed") if e["node"] == "1")
        batch_id = loader["output"]["batch_id"][0]
        async with session.post(f"{url}/api/clientid_bridge/batch/{batch_id}/stop") as response:
            assert response.status == 200, await response.text()
        await wait_idle(session, url)
        await tab.close()
        await asyncio.gather(listener, return_exceptions=True)
    return (stamps[-1] - start) / ITERATIONS, stamps[0] - start


async def main() -> None:
    found = find_comfyui()
    if isinstance(found, str):
        sys.exit(f"cost_growth: {found}")
    print(
        f"{time.strftime('%Y-%m-%d')} · {platform.machine()} · {os.cpu_count()} cores · "
        f"python {platform.python_version()} · ComfyUI {found[0]}"
    )
    root = Path(tempfile.mkdtemp(prefix="cib-cost-"))
    folders = {count: make_folder(root, count) for count in SIZES}
    results: dict[int, list[float]] = {count: [] for count in SIZES}
    firsts: dict[int, list[float]] = {count: [] for count in SIZES}
    with running_comfyui(root / "comfy", packs=[REPO]) as comfy:
        for count in SIZES:
            await one_round(comfy.url, folders[count], f"warm_{count}")
        for number in range(ROUNDS):
            for count in SIZES if number % 2 == 0 else SIZES[::-1]:
                mean, first = await one_round(comfy.url, folders[count], f"r{number}_{count}")
                results[count].append(mean)
                firsts[count].append(first)
    ratios = [large / small for small, large in zip(*(results[c] for c in SIZES), strict=True)]
    for count in SIZES:
        rounds = ", ".join(f"{value * 1000:.1f}" for value in results[count])
        print(
            f"{count:>6} files: {statistics.median(results[count]) * 1000:.1f} ms/iteration "
            f"(rounds: {rounds}); first iteration {statistics.median(firsts[count]) * 1000:.1f} ms"
        )
    print("rounds' ratios: " + ", ".join(f"{ratio:.3f}" for ratio in ratios))
    ratio = statistics.median(ratios)
    print(f"ratio 10,000 / 100 files, median of the rounds': {ratio:.3f} (target <= 1.1)")


if __name__ == "__main__":
    asyncio.run(main())
