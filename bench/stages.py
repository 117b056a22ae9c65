"""Where one iteration of the batch loop spends its time, per image, on a real ComfyUI.

Run: python bench/stages.py   (needs a ComfyUI checkout; see README)
A timing pack (written to a temp folder, loaded next to ours) wraps our loop's functions in
the running server: list, decode, to float32, to tensor, the nodes' own work, tensor to
pixels, encode, write and fsync, the report line, Batch Next's POST of the next prompt. The
per-image wall time is the gap between the server's own `execution_success` timestamps;
what the wrapped functions do not account for is ComfyUI's per-prompt overhead (queue,
validation of the graph, cache checks, events, history). batch_throughput.py prints the
same table side by side with its other numbers.
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
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders import make_jpegs  # noqa: E402

from comfy_clientid_bridge.tools.demo import post, wait_idle  # noqa: E402
from comfy_clientid_bridge.tools.launcher import REPO, Tab, find_comfyui, running_comfyui  # noqa: E402

COUNT = 30
TIMER_PACK = '''
"""Bench only: wraps the batch loop's functions in the running server and keeps their totals."""
import functools, sys, threading, time
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS = {}
TOTALS = {}
LOCK = threading.Lock()


def timed(name, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            with LOCK:
                TOTALS[name] = TOTALS.get(name, 0.0) + time.perf_counter() - start
    return wrapper


def module(suffix):
    return next(m for name, m in list(sys.modules.items()) if name.endswith(suffix))


def install():
    nodes = module("comfy_clientid_bridge.batch.nodes")
    images = module("comfy_clientid_bridge.batch.images")
    engine = module("comfy_clientid_bridge.batch.engine")
    internals = module("comfy_clientid_bridge.internals")
    for owner, name, label in [
        (nodes, "load_image", "load_image"),
        (images, "_to_arrays", "to_float"),
        (nodes, "_as_tensors", "to_tensor"),
        (nodes, "encode_image", "encode"),
        (nodes, "_write", "write"),
        (engine.BatchEngine, "record", "record"),
        (engine.Source, "list", "list"),
        (internals, "queue_prompt", "post_next"),
        (nodes.BatchImageLoader, "load", "loader"),
        (nodes.BatchImageSaver, "save", "saver"),
        (nodes.BatchProgress, "format", "progress"),
        (nodes.BatchNext, "advance", "next"),
    ]:
        setattr(owner, name, timed(label, getattr(owner, name)))
    changed = nodes.BatchImageLoader.IS_CHANGED.__func__
    nodes.BatchImageLoader.IS_CHANGED = classmethod(timed("is_changed", changed))


@PromptServer.instance.routes.post("/cib_bench/install")
async def install_route(request):
    install()
    return web.json_response({})


@PromptServer.instance.routes.post("/cib_bench/totals")
async def totals_route(request):
    with LOCK:
        totals = dict(TOTALS)
        TOTALS.clear()
    return web.json_response(totals)
'''


def write_timer_pack(root: Path) -> Path:
    pack = root / "cib_stage_timer"
    pack.mkdir(parents=True, exist_ok=True)
    (pack / "__init__.py").write_text(TIMER_PACK)
    return pack


async def _bench_call(session: aiohttp.ClientSession, url: str, route: str) -> dict[str, float]:
    async with session.post(f"{url}/cib_bench/{route}") as response:
        assert response.status == 200, await response.text()
        totals: dict[str, float] = await response.json()
        return totals


async def install_timers(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        await _bench_call(session, url, "install")


def example_graph(src: Path, tag: str, fmt: str = "png") -> dict[str, Any]:
    graph: dict[str, Any] = json.loads((REPO / "examples" / "batch_folder.api.json").read_text())
    graph["1"]["inputs"].update(folder=str(src), pattern="*.jpg")
    graph["2"]["inputs"].update(subfolder=tag, compress_level=4, format=fmt)
    return graph


async def run_batch(url: str, src: Path, tag: str, count: int, fmt: str = "png") -> list[float]:
    """Runs the example workflow over src; the server's execution_success times (s)."""
    async with aiohttp.ClientSession() as session:
        tab = await Tab(session, url, uuid.uuid4().hex).open()
        listener = asyncio.create_task(tab.listen())
        body = {"prompt": example_graph(src, tag, fmt), "client_id": tab.client_id}
        await post(session, url, body)
        while len([e for e in tab.of_type("executed") if e["node"] == "2"]) < count:
            await asyncio.sleep(0.002)
        await wait_idle(session, url)
        stamps = [e["timestamp"] / 1000 for e in tab.of_type("execution_success")]
        await tab.close()
        await asyncio.gather(listener, return_exceptions=True)
    return stamps


async def stage_times(url: str, src: Path, tag: str, count: int) -> dict[str, float]:
    """Per-image ms of each stage for one batch of `count` images (timers installed)."""
    async with aiohttp.ClientSession() as session:
        await _bench_call(session, url, "totals")  # drop what came before
        stamps = await run_batch(url, src, tag, count)
        totals = await _bench_call(session, url, "totals")
    wall = (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # first start unknown: gaps only
    ms = {name: 1000 * seconds / count for name, seconds in totals.items()}
    ms["wall"] = 1000 * wall
    return ms


STAGES = [
    ("list the folder (once per batch, spread over the images)", lambda t: t["list"]),
    ("decode (Pillow: open, JPEG decode, EXIF turn)", lambda t: t["load_image"] - t["to_float"]),
    ("to float32 (uint8 / 255)", lambda t: t["to_float"]),
    ("to tensor (torch.from_numpy)", lambda t: t["to_tensor"]),
    (
        "loader node's own work (batch state, progress)",
        lambda t: t["loader"] - t["load_image"] - t["to_tensor"] - t["list"],
    ),
    ("Batch Progress node", lambda t: t["progress"]),
    (
        "tensor to pixels (float -> uint8) and naming",
        lambda t: t["saver"] - t["encode"] - t["write"] - t["record"],
    ),
    ("encode", lambda t: t["encode"]),
    ("write + fsync (temp file, rename, folder)", lambda t: t["write"]),
    ("report line + fsync", lambda t: t["record"]),
    ("Batch Next: graph copy", lambda t: t["next"] - t["post_next"]),
    ("Batch Next: POST /prompt (validation, handlers)", lambda t: t["post_next"]),
    ("loader IS_CHANGED", lambda t: t.get("is_changed", 0.0)),
]


def stage_rows(ms: dict[str, float]) -> list[tuple[str, float]]:
    rows = [(name, value(ms)) for name, value in STAGES]
    nodes = ms["loader"] + ms["saver"] + ms["progress"] + ms["next"] + ms.get("is_changed", 0)
    rows.append(("ComfyUI per prompt (queue, graph checks, events, history)", ms["wall"] - nodes))
    rows.append(("one iteration, wall (gaps of execution_success)", ms["wall"]))
    return rows


def print_stage_table(runs: list[dict[str, float]]) -> None:
    """One column per run; ms per image."""
    print(f"{'stage, ms per image':58}" + "".join(f" run {n + 1:>3}" for n in range(len(runs))))
    table = [stage_rows(ms) for ms in runs]
    for row in range(len(table[0])):
        print(f"{table[0][row][0]:58}" + "".join(f"{t[row][1]:8.1f}" for t in table))


async def main() -> None:
    found = find_comfyui()
    if isinstance(found, str):
        sys.exit(f"stages: {found}")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.machine()} · {os.cpu_count()} cores · "
        f"load {os.getloadavg()[0]:.1f} · {COUNT} photo-like 1024x1024 JPEGs to PNG level 4"
    )
    root = Path(tempfile.mkdtemp(prefix="cib-stages-"))
    make_jpegs(root / "in", COUNT)
    with running_comfyui(root / "comfy", packs=[REPO, write_timer_pack(root)]) as comfy:
        await run_batch(comfy.url, root / "in", "warmup", COUNT)
        await install_timers(comfy.url)
        runs = [await stage_times(comfy.url, root / "in", f"r{n}", COUNT) for n in range(3)]
    print_stage_table(runs)


if __name__ == "__main__":
    asyncio.run(main())
