"""Batch throughput: 30 photo-like 1024x1024 JPEGs -> PNG (level 4), ours vs a plain script.

Run: python bench/batch_throughput.py   (needs a ComfyUI checkout; see README)
Side by side in one run, alternating: (a) our loader -> saver example workflow on a real
ComfyUI, timed from POST /prompt until the tab receives the last image's `executed` event
(sent by core only after the saver has written and fsynced the file); (b) a plain
single-process Pillow script doing the same decode -> float32 tensor -> uint8 -> PNG encode
-> write + fsync per image. Target: ours / plain <= 0.8. Also prints both outputs' sizes:
our saver's PNG encoder (Up filter, parallel deflate) is not Pillow's.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_clientid_bridge.tools.demo import post, wait_idle  # noqa: E402
from comfy_clientid_bridge.tools.launcher import REPO, Tab, find_comfyui, running_comfyui  # noqa: E402

COUNT, SIZE, ROUNDS = 30, 1024, 3

PLAIN = """
import os, sys, time
from pathlib import Path
import numpy as np
from PIL import Image, ImageOps
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
start = time.perf_counter()
for path in sorted(src.glob("*.jpg")):
    with Image.open(path) as image:
        rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.float32) / 255.0
    pixels = np.clip(rgb * 255.0, 0, 255).astype(np.uint8)
    target = dst / (path.stem + ".png")
    with open(target, "wb") as handle:
        Image.fromarray(pixels).save(handle, "PNG", compress_level=4)
        handle.flush()
        os.fsync(handle.fileno())
print(time.perf_counter() - start)
"""


def photo_like(seed: int) -> Image.Image:
    """Smooth gradients, a few shapes and sensor-like noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    channels = [
        128 + 100 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 2) + y * rng.uniform(0.5, 2)) + phase)
        for phase in rng.uniform(0, 2 * np.pi, 3)
    ]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 6, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_inputs(folder: Path) -> None:
    folder.mkdir(parents=True)
    for number in range(COUNT):
        photo_like(number).save(folder / f"photo{number:02}.jpg", quality=90)


def plain_seconds(src: Path, dst: Path) -> float:
    return float(subprocess.check_output([sys.executable, "-c", PLAIN, str(src), str(dst)]))


async def ours_seconds(url: str, src: Path, tag: str) -> float:
    graph = json.loads((REPO / "examples" / "batch_folder.api.json").read_text())
    graph["1"]["inputs"].update(folder=str(src), pattern="*.jpg")
    graph["2"]["inputs"].update(subfolder=tag, compress_level=4)
    async with aiohttp.ClientSession() as session:
        tab = await Tab(session, url, uuid.uuid4().hex).open()
        listener = asyncio.create_task(tab.listen())
        start = time.perf_counter()
        await post(session, url, {"prompt": graph, "client_id": tab.client_id})
        while len([e for e in tab.of_type("executed") if e["node"] == "2"]) < COUNT:
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - start
        await wait_idle(session, url)
        await tab.close()
        await asyncio.gather(listener, return_exceptions=True)
    return elapsed


async def main() -> None:
    found = find_comfyui()
    if isinstance(found, str):
        sys.exit(f"batch_throughput: {found}")
    print(
        f"{time.strftime('%Y-%m-%d')} · {platform.machine()} · {os.cpu_count()} cores · "
        f"python {platform.python_version()}"
    )
    root = Path(tempfile.mkdtemp(prefix="cib-throughput-"))
    make_inputs(root / "in")
    ours: list[float] = []
    plain: list[float] = []
    with running_comfyui(root / "comfy", packs=[REPO]) as comfy:
        await ours_seconds(comfy.url, root / "in", "warmup")
        for number in range(ROUNDS):
            plain.append(plain_seconds(root / "in", root / f"plain{number}"))
            ours.append(await ours_seconds(comfy.url, root / "in", f"r{number}"))
    for name, values in (("plain Pillow script", plain), ("ours on ComfyUI", ours)):
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:>20}: {statistics.median(values):.2f} s for {COUNT} images ({rounds})")
    ratio = statistics.median(ours) / statistics.median(plain)
    print(f"ratio ours / plain: {ratio:.2f} (target <= 0.8)")
    ours_bytes = sum(p.stat().st_size for p in (root / "comfy" / "output" / "r0").rglob("*.png"))
    plain_bytes = sum(p.stat().st_size for p in (root / "plain0").glob("*.png"))
    print(
        f"output size: ours {ours_bytes / 1e6:.1f} MB (Up filter, deflate level 4 on all cores), "
        f"plain {plain_bytes / 1e6:.1f} MB (Pillow, adaptive filters, level 4): "
        f"ratio {ours_bytes / plain_bytes:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
