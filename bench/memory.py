"""Memory across a long batch: RSS of the ComfyUI process over 1,000 iterations.

Run: python bench/memory.py   (needs a ComfyUI checkout; see README)
A folder of 1,000 64x64 PNGs through the example workflow on a real ComfyUI with this
package. Prints RSS (from /proc) every 100 images, the growth after warm-up, and how much
ComfyUI's own history holds by then (it keeps up to 10,000 prompts with their graphs).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_clientid_bridge.tools.demo import post, wait_idle  # noqa: E402
from comfy_clientid_bridge.tools.launcher import REPO, Tab, find_comfyui, running_comfyui  # noqa: E402

COUNT, EVERY = 1_000, 100


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def main() -> None:
    found = find_comfyui()
    if isinstance(found, str):
        sys.exit(f"memory: {found}")
    print(
        f"{time.strftime('%Y-%m-%d')} · {platform.machine()} · {os.cpu_count()} cores · "
        f"python {platform.python_version()}"
    )
    root = Path(tempfile.mkdtemp(prefix="cib-memory-"))
    folder = root / "in"
    folder.mkdir()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "img0.png")
    data = (folder / "img0.png").read_bytes()
    for number in range(1, COUNT):
        (folder / f"img{number}.png").write_bytes(data)
    graph = json.loads((REPO / "examples" / "batch_folder.api.json").read_text())
    graph["1"]["inputs"].update(folder=str(folder))
    graph["2"]["inputs"].update(compress_level=1)
    for clear in (False, True):
        await one_run(root / f"comfy-{clear}", graph, clear_history=clear)


async def one_run(root: Path, graph: dict[str, object], *, clear_history: bool) -> None:
    """1,000 images; with clear_history, ComfyUI's history is emptied every 100 images, so
    what growth remains is not history's."""
    with running_comfyui(root, packs=[REPO]) as comfy:
        pid = comfy.process.pid
        samples: list[tuple[int, float]] = [(0, rss_mb(pid))]
        async with aiohttp.ClientSession() as session:
            tab = await Tab(session, comfy.url, uuid.uuid4().hex).open()
            listener = asyncio.create_task(tab.listen())
            await post(session, comfy.url, {"prompt": graph, "client_id": tab.client_id})
            while samples[-1][0] < COUNT:
                done = len(tab.of_type("execution_success"))
                if done >= samples[-1][0] + EVERY:
                    if clear_history:
                        await session.post(f"{comfy.url}/api/history", json={"clear": True})
                    samples.append((done // EVERY * EVERY, rss_mb(pid)))
                await asyncio.sleep(0.01)
            await wait_idle(session, comfy.url)
            async with session.get(f"{comfy.url}/history") as response:
                history_bytes = len(await response.read())
            await tab.close()
            await asyncio.gather(listener, return_exceptions=True)
    label = "history cleared every 100" if clear_history else "history kept (ComfyUI's default)"
    print(f"{label}:")
    print("  " + ", ".join(f"{done}: {rss:.0f} MB" for done, rss in samples))
    growth = samples[-1][1] - samples[1][1]
    print(
        f"  growth from image {samples[1][0]} to {samples[-1][0]}: {growth:+.1f} MB (target <= 50 MB)"
    )
    print(f"  ComfyUI's /history at the end: {history_bytes / 1e6:.2f} MB of JSON")


if __name__ == "__main__":
    asyncio.run(main())
