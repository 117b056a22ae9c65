"""How busy the GPU stays through a batch: the pipelined loop, the serial loop and core's nodes.

Run: python bench/gpu_busy.py [--rounds 3] [--ms 100,50]   (needs a ComfyUI checkout; see README)

A stand-in "GPU" node holds ComfyUI's executor for T ms with the GIL released (time.sleep, as
a CUDA wait does) between the loader and the saver; 30 photo-like 1024x1024 JPEGs go to PNG
(level 4). The figure is the GPU's busy share: 30 x T / wall. Side by side in one run, for
each T, rounds alternating (the order rotates each round):
  serial     our loop with COMFY_CLIENTID_BRIDGE_PIPELINE=0 (its own ComfyUI);
  pipelined  our loop as it ships (save behind, decode ahead);
  core       core's LoadImage + core's SaveImage around the same stand-in, one prompt per
             image queued by this script all at once (what users have today; note that
             SaveImage does not fsync, ours fsyncs each file and its report line);
  loop floor our pipelined loop over 30 tiny 8x8 JPEGs: its fixed cost per image;
  core floor core's EmptyImage 8x8 -> stand-in -> a no-op output node, 30 prompts queued at
             once: ComfyUI's own per-prompt work, nothing of ours.
Before each run the disk's dirty pages are written out (os.sync): core's SaveImage does not
fsync, and its ~30 files would otherwise be flushed during whichever run comes next. Every
way is warmed up once on the photos and once on the tiny images first.
Wall: from the POST until the event that says the batch is done (our Batch Next's "done",
sent only after the last file and report line are durable; core's last execution_success).
The machine may be shared: the load average is printed with each round; ratios of one run
are what to compare. Targets: pipelined >= 0.90 at T = 100 ms and >= 0.80 at T = 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders import make_jpegs  # noqa: E402

from comfy_clientid_bridge.batch.gc_freeze import GC_FREEZE_SWITCH  # noqa: E402
from comfy_clientid_bridge.tools.demo import post, wait_idle  # noqa: E402
from comfy_clientid_bridge.tools.launcher import (  # noqa: E402
    REPO,
    Comfy,
    Tab,
    find_comfyui,
    running_comfyui,
)

COUNT = 30
WAYS = ("serial", "pipelined", "core", "loop floor", "core floor")

STAND_IN_PACK = '''
"""Bench-only nodes: a stand-in GPU that holds the executor, and a no-op output."""
import time


class ClientIdBridgeBench_Gpu:
    CATEGORY = "clientid_bridge/bench"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "ms": ("INT", {"default": 100}),
                             "token": ("STRING", {"default": ""})}}

    def run(self, image, ms, token):
        time.sleep(ms / 1000)  # releases the GIL, as a wait on CUDA does
        return (image,)


class ClientIdBridgeBench_Sink:
    CATEGORY = "clientid_bridge/bench"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        return {}


NODE_CLASS_MAPPINGS = {
    "ClientIdBridgeBench_Gpu": ClientIdBridgeBench_Gpu,
    "ClientIdBridgeBench_Sink": ClientIdBridgeBench_Sink,
}
'''


def write_stand_in_pack(root: Path) -> Path:
    pack = root / "cib_gpu_stand_in"
    pack.mkdir(parents=True, exist_ok=True)
    (pack / "__init__.py").write_text(STAND_IN_PACK)
    return pack


def isal_path(root: Path, python: Path) -> tuple[dict[str, str], str]:
    """ComfyUI's env gaining isal (requirements.txt lists it; a test matrix may lack it),
    from this interpreter's own copy when ComfyUI's python has none. -> (env, what it has)."""
    check = [str(python), "-c", "import isal; print(isal.__version__)"]
    found = subprocess.run(check, capture_output=True, text=True, check=False)
    if found.returncode == 0:
        return {}, f"isal {found.stdout.strip()}"
    try:
        import isal
    except ImportError:
        return {}, "NO isal (zlib fallback)"
    site = root / "isal-site"
    site.mkdir(exist_ok=True)
    (site / "isal").symlink_to(Path(isal.__file__).parent, target_is_directory=True)
    return {"PYTHONPATH": str(site)}, f"isal {isal.__version__} (added for this run)"


def loop_graph(src: Path, tag: str, ms: int) -> dict[str, Any]:
    graph: dict[str, Any] = json.loads((REPO / "examples" / "batch_folder.api.json").read_text())
    graph["1"]["inputs"].update(folder=str(src), pattern="*.jpg")
    graph["2"]["inputs"].update(subfolder=tag, compress_level=4, format="png")
    graph["9"] = {
        "class_type": "ClientIdBridgeBench_Gpu",
        "inputs": {"image": ["1", 0], "ms": ms, "token": ""},
    }
    graph["2"]["inputs"]["images"] = ["9", 0]
    return graph


def core_graph(image: str, tag: str, ms: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "9": {
            "class_type": "ClientIdBridgeBench_Gpu",
            "inputs": {"image": ["1", 0], "ms": ms, "token": tag},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": tag}},
    }


def core_floor_graph(number: int, tag: str, ms: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "9": {
            "class_type": "ClientIdBridgeBench_Gpu",
            "inputs": {"image": ["1", 0], "ms": ms, "token": f"{tag}-{number}"},
        },
        "2": {"class_type": "ClientIdBridgeBench_Sink", "inputs": {"image": ["9", 0]}},
    }


async def timed(
    url: str,
    send: Callable[[aiohttp.ClientSession, Tab], Awaitable[object]],
    done: Callable[[Tab], bool],
) -> float:
    """Seconds from the first POST until `done(tab)` holds."""
    async with aiohttp.ClientSession() as session:
        tab = await Tab(session, url, uuid.uuid4().hex).open()
        listener = asyncio.create_task(tab.listen())
        start = time.perf_counter()
        await send(session, tab)
        while not done(tab):
            if tab.of_type("execution_error"):
                raise RuntimeError(f"a prompt failed: {tab.of_type('execution_error')[0]}")
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - start
        await wait_idle(session, url)
        await tab.close()
        await asyncio.gather(listener, return_exceptions=True)
    return elapsed


def batch_done(tab: Tab) -> bool:
    return any(
        e["node"] == "4" and e["output"].get("state") == ["done"] for e in tab.of_type("executed")
    )


async def our_loop(comfy: Comfy, src: Path, tag: str, ms: int) -> float:
    async def send(session: aiohttp.ClientSession, tab: Tab) -> None:
        await post(
            session, comfy.url, {"prompt": loop_graph(src, tag, ms), "client_id": tab.client_id}
        )

    return await timed(comfy.url, send, batch_done)


async def core_queue(comfy: Comfy, graphs: list[dict[str, Any]]) -> float:
    async def send(session: aiohttp.ClientSession, tab: Tab) -> None:
        for graph in graphs:
            await post(session, comfy.url, {"prompt": graph, "client_id": tab.client_id})

    return await timed(comfy.url, send, lambda tab: len(tab.of_type("execution_success")) >= COUNT)


def load() -> float:
    return os.getloadavg()[0]


async def measure(
    servers: dict[str, Comfy], root: Path, rounds: int, millis: list[int]
) -> dict[tuple[str, int], list[float]]:
    walls: dict[tuple[str, int], list[float]] = {(way, ms): [] for way in WAYS for ms in millis}
    names = sorted(p.name for p in (root / "in").glob("*.jpg"))
    runs: dict[str, Callable[[str, int], Awaitable[float]]] = {
        "serial": lambda tag, ms: our_loop(servers["serial"], root / "in", tag, ms),
        "pipelined": lambda tag, ms: our_loop(servers["pipelined"], root / "in", tag, ms),
        "core": lambda tag, ms: core_queue(
            servers["pipelined"], [core_graph(f"bench/{n}", tag, ms) for n in names]
        ),
        "loop floor": lambda tag, ms: our_loop(servers["pipelined"], root / "tiny", tag, ms),
        "core floor": lambda tag, ms: core_queue(
            servers["pipelined"], [core_floor_graph(n, tag, ms) for n in range(COUNT)]
        ),
    }
    for number in range(rounds):
        order = WAYS[number % len(WAYS) :] + WAYS[: number % len(WAYS)]
        for ms in millis:
            before = load()
            for way in order:
                tag = f"r{number}_{ms}_{way.replace(' ', '_')}"
                await asyncio.to_thread(os.sync)  # the last run's writes are not billed here
                walls[(way, ms)].append(await runs[way](tag, ms))
            shares = ", ".join(
                f"{way} {COUNT * ms / 1000 / walls[(way, ms)][-1]:.3f}" for way in WAYS
            )
            print(f"round {number + 1}, T = {ms} ms: {shares} (load {before:.1f} -> {load():.1f})")
    return walls


def report(walls: dict[tuple[str, int], list[float]], millis: list[int]) -> None:
    for ms in millis:
        busy = COUNT * ms / 1000
        median = {way: statistics.median(walls[(way, ms)]) for way in WAYS}
        print(f"\nT = {ms} ms, medians of {len(walls[(WAYS[0], ms)])} rounds:")
        for way in WAYS:
            shares = [f"{busy / wall:.3f}" for wall in walls[(way, ms)]]
            gap = 1000 * (median[way] - busy) / COUNT
            print(
                f"  {way:>10}: busy share {busy / median[way]:.3f} (rounds {', '.join(shares)}); "
                f"wall {median[way]:.2f} s; {gap:.1f} ms per image not on the GPU"
            )
        target = 0.90 if ms >= 100 else 0.80
        gap = median["pipelined"] - busy
        print(
            f"  pipelined {busy / median['pipelined']:.3f} (target >= {target:.2f}); "
            f"serial {busy / median['serial']:.3f}; core {busy / median['core']:.3f}; "
            f"pipelined / serial wall {median['pipelined'] / median['serial']:.2f}"
        )
        if gap > 0:
            own = max(0.0, median["core floor"] - busy)
            floor = max(0.0, median["loop floor"] - busy)
            print(
                f"  of the pipelined gap ({1000 * gap / COUNT:.1f} ms per image): ComfyUI's own "
                f"per-prompt work {own / gap:.0%} ({1000 * own / COUNT:.1f} ms), the loop's "
                f"fixed cost with it {floor / gap:.0%} ({1000 * floor / COUNT:.1f} ms)"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ms", default="100,50", help="stand-in GPU times, comma-separated")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="both servers with COMFY_CLIENTID_BRIDGE_GC_FREEZE=1 (ComfyUI's collections "
        "between prompts then skip the objects alive at start; docs/batch-pipeline.md)",
    )
    args = parser.parse_args()
    millis = [int(value) for value in args.ms.split(",")]
    found = find_comfyui()
    if isinstance(found, str):
        sys.exit(f"gpu_busy: {found}")
    root = Path(tempfile.mkdtemp(prefix="cib-gpu-busy-"))
    env, isal_note = isal_path(root, found[1])
    if args.gc_freeze:
        env[GC_FREEZE_SWITCH] = "1"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.machine()} · {os.cpu_count()} cores · "
        f"ComfyUI {found[0]} · {isal_note} · load average {load():.1f} · "
        f"{GC_FREEZE_SWITCH}={env.get(GC_FREEZE_SWITCH, 'unset')}"
    )
    make_jpegs(root / "in", COUNT)
    (root / "tiny").mkdir()
    for number in range(COUNT):
        Image.new("RGB", (8, 8), (number, 0, 0)).save(root / "tiny" / f"t{number:02}.jpg")
    packs = [REPO, write_stand_in_pack(root)]
    try:
        with ExitStack() as stack:
            servers = {
                mode: stack.enter_context(
                    running_comfyui(
                        root / mode,
                        packs=packs,
                        env={
                            **env,
                            "COMFY_CLIENTID_BRIDGE_PIPELINE": "0" if mode == "serial" else "1",
                        },
                    )
                )
                for mode in ("serial", "pipelined")
            }
            shutil.copytree(root / "in", root / "pipelined" / "input" / "bench")
            for comfy in servers.values():  # warm-up: first imports, first prompt, each path
                await our_loop(comfy, root / "tiny", "warmup", 1)
                await our_loop(comfy, root / "in", "warmup_photos", 1)
            await core_queue(
                servers["pipelined"], [core_floor_graph(n, "warmup", 1) for n in range(COUNT)]
            )
            await core_queue(
                servers["pipelined"],
                [core_graph(f"bench/{p.name}", "warmup", 1) for p in sorted(root.glob("in/*.jpg"))],
            )
            walls = await measure(servers, root, args.rounds, millis)
        report(walls, millis)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
