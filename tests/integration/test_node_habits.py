"""On a real ComfyUI: node code's broadcasts and queue puts reach the running prompt's tab only."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from integration.support import comfy_fixture

from comfy_clientid_bridge.tools.demo import post, prompts_saving, wait_idle
from comfy_clientid_bridge.tools.launcher import REPO, Comfy, Tab

pytestmark = pytest.mark.integration

PACK = Path(__file__).parent / "packs" / "node_habits_pack"
ITERATIONS = 3
BROADCASTS_PER_ITERATION = 3  # the pack's loader, saver and progress stand-ins
WORKFLOW = {"nodes": [], "links": [], "extra": {"marker": "tab-a-ui"}}

with_package = comfy_fixture(REPO, PACK)
without_package = comfy_fixture(PACK)
part_switched_off = comfy_fixture(REPO, PACK, env={"COMFY_CLIENTID_BRIDGE_BROADCASTS": "0"})


def habits_graph(prefix: str, add_queue: bool) -> dict[str, Any]:
    """EmptyImage -> SaveImage; a broadcasting node; a node that puts the next iteration."""
    images = ["1", 0]
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}},
        "3": {
            "class_type": "CIBHabitsBroadcast",
            "inputs": {"images": images, "marker": prefix, "index": 0, "add_queue": add_queue},
        },
        "4": {
            "class_type": "CIBHabitsPutNext",
            "inputs": {"images": images, "index": 0, "total": ITERATIONS, "color_node": "1"},
        },
    }


@dataclass
class Seen:
    """What each tab received of tab A's batch."""

    tab_a: Tab
    tab_b: Tab
    batch: dict[str, Any]  # prompt id -> history entry, every iteration that ran
    prefix: str

    def broadcasts(self, tab: Tab) -> list[dict[str, Any]]:
        """The pack's broadcast `executed` events (they carry the batch's marker)."""
        return [
            event
            for event in tab.of_type("executed")
            if str((event.get("output") or {}).get("text", [""])[0]).startswith(self.prefix)
        ]

    def add_queue(self, tab: Tab) -> int:
        return sum(e.get("marker") == self.prefix for e in tab.of_type("impact-add-queue"))

    def iterations_seen(self, tab: Tab) -> int:
        return len({e["prompt_id"] for e in tab.of_type("execution_start")} & set(self.batch))


async def run_habits(comfy: Comfy, add_queue: bool = False) -> Seen:
    """Tab A queues the habits graph once; the pack puts the other iterations; tab B idles."""
    prefix = f"H_{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        tab_a = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        tab_b = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listeners = [asyncio.create_task(tab.listen()) for tab in (tab_a, tab_b)]
        body = {
            "prompt": habits_graph(prefix, add_queue),
            "client_id": tab_a.client_id,
            "extra_data": {"extra_pnginfo": {"workflow": WORKFLOW}},
        }
        await post(session, comfy.url, body)
        batch = await _all_iterations(session, comfy.url, prefix)
        await asyncio.sleep(0.3)  # the last messages reach the sockets
        for tab in (tab_a, tab_b):
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)
    return Seen(tab_a, tab_b, batch, prefix)


async def _all_iterations(
    session: aiohttp.ClientSession, url: str, prefix: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await wait_idle(session, url)
        async with session.get(f"{url}/history?max_items=100") as response:
            batch = prompts_saving(await response.json(), prefix)
        if len(batch) >= ITERATIONS or asyncio.get_running_loop().time() > deadline:
            return batch
        await asyncio.sleep(0.3)


async def test_with_the_package_every_habit_reaches_tab_a_only(with_package: Comfy) -> None:
    seen = await run_habits(with_package, add_queue=True)
    assert len(seen.batch) == ITERATIONS  # every put iteration ran
    assert seen.iterations_seen(seen.tab_a) == ITERATIONS  # and tab A saw each one start
    assert len(seen.broadcasts(seen.tab_a)) == ITERATIONS * BROADCASTS_PER_ITERATION
    assert seen.add_queue(seen.tab_a) == ITERATIONS
    assert seen.broadcasts(seen.tab_b) == [] and seen.add_queue(seen.tab_b) == 0
    assert seen.iterations_seen(seen.tab_b) == 0
    assert seen.tab_b.of_type("status")  # the server's own broadcast still reaches tab B


async def test_put_iterations_carry_tab_a_and_its_workflow(with_package: Comfy) -> None:
    seen = await run_habits(with_package)
    for entry in seen.batch.values():
        extra = entry["prompt"][3]
        assert extra["client_id"] == seen.tab_a.client_id
        assert extra["extra_pnginfo"]["workflow"] == WORKFLOW
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{with_package.url}/clientid_bridge/status") as response:
            status = await response.json()
    assert status["queue_puts"]["rewrite"] >= ITERATIONS - 1
    assert status["routed_broadcasts"]["executed"] >= ITERATIONS * BROADCASTS_PER_ITERATION


@pytest.mark.parametrize("server", ["without_package", "part_switched_off"])
async def test_control_broadcasts_leak_to_tab_b_and_puts_miss_tab_a(
    server: str, request: pytest.FixtureRequest
) -> None:
    comfy: Comfy = request.getfixturevalue(server)
    seen = await run_habits(comfy, add_queue=True)
    assert len(seen.batch) == ITERATIONS
    assert seen.iterations_seen(seen.tab_a) == 1  # only the prompt tab A queued itself
    # The first iteration has tab A's client, so its broadcasts... are still broadcasts.
    assert len(seen.broadcasts(seen.tab_b)) == ITERATIONS * BROADCASTS_PER_ITERATION
    assert seen.add_queue(seen.tab_b) == ITERATIONS
