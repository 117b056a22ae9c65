"""The naive re-queue loop on a real ComfyUI, watched by a tab, with and without the bridge."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .launcher import NAIVE_PACK, REPO, Comfy, Tab, find_comfyui, running_comfyui

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
        await wait_idle(session, comfy.url)
        await asyncio.sleep(0.3)
        async with session.get(f"{comfy.url}/history?max_items=200") as response:
            entries = await response.json()
        for tab in (tab_a, tab_b):
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)
    return BatchRun(tab_a, tab_b, outside, prompts_saving(entries, prefix), prefix)


def images_seen(run: BatchRun) -> int:
    return len([e for e in run.tab_a.of_type("executed") if e["node"] == "2"])


async def _demo() -> int:
    found = find_comfyui()
    if isinstance(found, str):
        print(f"demo: {found}")  # noqa: T201 - a command-line report
        return 2
    print(f"ComfyUI: {found[0]}")  # noqa: T201
    for label, packs in (
        ("without the bridge", [NAIVE_PACK]),
        ("with the bridge", [REPO, NAIVE_PACK]),
    ):
        root = Path(tempfile.mkdtemp(prefix="clientid-bridge-demo-"))
        with running_comfyui(root, packs=packs) as comfy:
            for mode in ("uuid4", "none", "timer"):
                run = await run_batch(comfy, mode)
                leaked = len(run.tab_b.prompt_ids() & set(run.batch))
                print(  # noqa: T201
                    f"{label:>19}, re-queue with {mode:<5}: tab A saw {images_seen(run)} of "
                    f"{len(run.batch)} images; tab B saw {leaked} of A's prompts"
                )
        print(f"{'':>19}  outputs: {root / 'output'}")  # noqa: T201
    return 0


def demo() -> int:
    return asyncio.run(_demo())
