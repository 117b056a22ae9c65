"""The naive re-queue loop on a real ComfyUI, watched by a tab, with and without the bridge."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .cli import run_batch as run_cli_batch
from .launcher import NAIVE_PACK, REPO, Comfy, Tab, find_comfyui, running_comfyui

logger = logging.getLogger(__name__)

ITERATIONS = 4
WORKFLOW = {"last_node_id": 3, "nodes": [], "links": [], "extra": {"marker": "tab-a-ui"}}


def loop_graph(mode: str, prefix: str, iterations: int = ITERATIONS) -> dict[str, Any]:
    """EmptyImage -> core SaveImage, and the naive pack's node re-queueing the next colour."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        "3": {
            "class_type": "ClientIdBridgeExampleNaiveRequeue",
            "inputs": {
                "images": ["1", 0],
                "index": 0,
                "total": iterations,
                "mode": mode,
                "color_node": "1",
            },
        },
    }


def single_graph(prefix: str) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with session.post(f"{url}/api/prompt", json=body) as response:
        answer = await response.json()
        if response.status != 200:
            raise RuntimeError(f"ComfyUI refused the prompt: {answer}")
        return str(answer["prompt_id"])


async def wait_idle(session: aiohttp.ClientSession, url: str, timeout: float = 90) -> None:
    """Queue empty three polls in a row (longer than the timer mode's 0.2 s delay)."""
    loop = asyncio.get_running_loop()
    quiet, deadline = 0, loop.time() + timeout
    while quiet < 3:
        if loop.time() > deadline:
            raise TimeoutError("ComfyUI's queue never went idle")
        async with session.get(f"{url}/queue") as response:
            queue = await response.json()
        quiet = 0 if queue["queue_running"] or queue["queue_pending"] else quiet + 1
        await asyncio.sleep(0.3)


def prompts_saving(entries: dict[str, Any], prefix: str) -> dict[str, Any]:
    """History entries whose SaveImage (node "2") used `prefix`."""
    return {
        prompt_id: entry
        for prompt_id, entry in entries.items()
        if entry["prompt"][2].get("2", {}).get("inputs", {}).get("filename_prefix") == prefix
    }


@dataclass
class BatchRun:
    tab_a: Tab
    tab_b: Tab
    outside_prompt_id: str
    batch: dict[str, Any]  # prompt id -> history entry, for every iteration that ran
    prefix: str


async def run_batch(comfy: Comfy, mode: str) -> BatchRun:
    """Tab A starts a batch, tab B idles, an outside script queues its own prompt midway."""
    prefix = f"A_{mode}_{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as session:
        tab_a = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        tab_b = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listeners = [asyncio.create_task(tab.listen()) for tab in (tab_a, tab_b)]
        extra = {"extra_pnginfo": {"workflow": WORKFLOW}, "api_key_comfy_org": "secret"}
        body = {
            "prompt": loop_graph(mode, prefix),
            "client_id": tab_a.client_id,
            "extra_data": extra,
        }
        await post(session, comfy.url, body)
        await asyncio.sleep(0.1)
        outside = await post(session, comfy.url, {"prompt": single_graph(f"OUT_{prefix}")})
        entries = await _settled_history(session, comfy.url, prefix)
        for tab in (tab_a, tab_b):
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)
    return BatchRun(tab_a, tab_b, outside, prompts_saving(entries, prefix), prefix)


async def _settled_history(
    session: aiohttp.ClientSession, url: str, prefix: str, timeout: float = 90
) -> dict[str, Any]:
    """History once the loop has run all its iterations: an idle queue is not enough, a
    timer-mode re-queue leaves it empty for 0.2 s between iterations."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await wait_idle(session, url)
        async with session.get(f"{url}/history?max_items=200") as response:
            entries: dict[str, Any] = await response.json()
        if len(prompts_saving(entries, prefix)) >= ITERATIONS:
            return entries
        if asyncio.get_running_loop().time() > deadline:
            return entries  # the caller's assertions say what is missing
        await asyncio.sleep(0.3)


def images_seen(run: BatchRun) -> int:
    return len([e for e in run.tab_a.of_type("executed") if e["node"] == "2"])


def sample_images(folder: Path, count: int = 8) -> Path:
    """Small gradient pictures to run the example batch on."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:256, 0:320]
    for number in range(count):
        pixels = np.stack([(x + 30 * number) % 256, y, (x + y) // 2 % 256], axis=-1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"sample{number + 1}.png")
    return folder


async def _demo(compare: bool) -> int:
    found = find_comfyui()
    if isinstance(found, str):
        logger.error("demo: %s", found)
        return 2
    root = Path(tempfile.mkdtemp(prefix="clientid-bridge-demo-"))
    folder = sample_images(root / "samples")
    workflow = json.loads((REPO / "examples" / "batch_folder.api.json").read_text())
    logger.info("ComfyUI %s, starting with comfy_clientid_bridge ...", found[0])
    with running_comfyui(root / "comfy", packs=[REPO, NAIVE_PACK]) as comfy:
        logger.info("Batch: examples/batch_folder.api.json over %s", folder)
        status = await run_cli_batch(comfy.url, workflow, folder, out=sys.stdout)
        logger.info("outputs: %s", comfy.output / "batch")
        run = await run_batch(comfy, "uuid4")
        logger.info(
            "A pack re-queueing the naive way (fresh uuid4 client_id): "
            "the tab that started it saw %d of %d images",
            images_seen(run),
            len(run.batch),
        )
    if compare:
        with running_comfyui(root / "plain", packs=[NAIVE_PACK]) as comfy:
            run = await run_batch(comfy, "uuid4")
            logger.info(
                "The same without comfy_clientid_bridge: %d of %d", images_seen(run), len(run.batch)
            )
    logger.info("ComfyUI shut down.")
    return status


def demo(compare: bool = False) -> int:
    return asyncio.run(_demo(compare))
