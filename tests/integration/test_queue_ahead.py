"""On a real ComfyUI: the pipelined loop queues each next prompt while the image runs, a
workflow that fails on one image stops its batch, and the opt-in collector freeze."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from integration.cli_support import SLOW_PACK
from integration.support import comfy_fixture
from PIL import Image

from comfy_clientid_bridge.batch.gc_freeze import GC_FREEZE_SWITCH
from comfy_clientid_bridge.tools.demo import post, wait_idle
from comfy_clientid_bridge.tools.launcher import REPO, Comfy, Tab

pytestmark = pytest.mark.integration
EXAMPLE = REPO / "examples" / "batch_folder.api.json"

comfy = comfy_fixture(REPO, SLOW_PACK, env={GC_FREEZE_SWITCH: "1"})


def tiny_folder(folder: Path, count: int) -> Path:
    folder.mkdir()
    for number in range(count):
        Image.new("RGB", (8, 8), (number * 20, 0, 0)).save(folder / f"t{number}.png")
    return folder


def graph(folder: Path, subfolder: str, *, fail_stem: str = "", pause: float = 0.0) -> Any:
    """The example loop with a pause, then a node that fails on `fail_stem`, before the saver."""
    loop: dict[str, Any] = json.loads(EXAMPLE.read_text())
    loop["1"]["inputs"].update(folder=str(folder))
    loop["2"]["inputs"].update(subfolder=subfolder, images=["21", 0])
    loop["20"] = {
        "class_type": "ClientIdBridgeTest_Pause",
        "inputs": {"image": ["1", 0], "seconds": pause},
    }
    loop["21"] = {
        "class_type": "ClientIdBridgeTest_FailOn",
        "inputs": {"image": ["20", 0], "stem": ["1", 2], "fail_stem": fail_stem},
    }
    return loop


async def queue_pending(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/queue") as response:
        return len((await response.json())["queue_pending"])


async def run_batch(comfy: Comfy, loop: Any) -> Tab:
    """Runs the loop to the end -> its tab, with every event in the order the server sent it."""
    async with aiohttp.ClientSession() as session:
        tab = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listener = asyncio.create_task(tab.listen())
        await post(session, comfy.url, {"prompt": loop, "client_id": tab.client_id})
        await wait_idle(session, comfy.url)
        assert await queue_pending(session, comfy.url) == 0
        await tab.close()
        await asyncio.gather(listener, return_exceptions=True)
    return tab


def queue_while_paused(tab: Tab) -> list[list[int]]:
    """Per prompt, the queue sizes core announced (status events, sent to every tab in order
    with the prompt's own events) from its start until the pause node (20) had run."""
    seen: list[list[int]] = []
    paused = False
    for event in tab.events:
        kind, data = event["type"], event.get("data", {})
        if kind == "execution_start":
            seen.append([])
            paused = True
        elif kind == "executing" and data.get("node") == "21":
            paused = False
        elif kind == "status" and paused:
            seen[-1].append(data["status"]["exec_info"]["queue_remaining"])
    return seen


def loader_states(tab: Tab) -> list[tuple[str, str]]:
    return [
        (e["output"]["state"][0], e["output"]["text"][0])
        for e in tab.of_type("executed")
        if e["node"] == "1"
    ]


async def test_the_next_prompt_waits_in_the_queue_while_the_image_runs(
    comfy: Comfy, tmp_path: Path, own_subfolder: str
) -> None:
    folder = tiny_folder(tmp_path / "ahead", 4)
    tab = await run_batch(comfy, graph(folder, own_subfolder, pause=0.3))
    saved = sorted(p.name for p in (comfy.output / own_subfolder).glob("*.png"))
    assert saved == [f"t{n}_out.png" for n in range(4)]
    # Before each image's pause had ended, the next image's prompt was queued (the queue:
    # the running prompt and that one); the last image queued none; never two ahead.
    sizes = queue_while_paused(tab)
    assert [2 in s for s in sizes] == [True, True, True, False], sizes
    assert max(n for s in sizes for n in s) == 2, sizes
    # One prompt per image: Batch Next queued nothing on top of the prompts queued ahead.
    assert len(tab.of_type("execution_start")) == 4 and not tab.of_type("execution_error")


async def test_a_workflow_that_fails_on_one_image_stops_the_batch_and_run_again_ends_it(
    comfy: Comfy, tmp_path: Path, own_subfolder: str
) -> None:
    folder = tiny_folder(tmp_path / "fails", 5)
    out = comfy.output / own_subfolder
    tab = await run_batch(comfy, graph(folder, own_subfolder, fail_stem="t2"))
    [error] = tab.of_type("execution_error")
    assert "test failure on t2" in error["exception_message"]
    assert sorted(p.name for p in out.glob("*.png")) == ["t0_out.png", "t1_out.png"]
    # The prompt queued ahead for t3 ran and loaded nothing: the batch stopped at t2.
    state, text = loader_states(tab)[-1]
    assert state == "stopped" and "the previous image's prompt did not end" in text
    assert len(tab.of_type("execution_start")) == 4  # t0, t1, t2 (failed), t3 (no image)
    tab = await run_batch(comfy, graph(folder, own_subfolder))  # fixed: a new batch
    assert sorted(p.name for p in out.glob("*.png")) == [f"t{n}_out.png" for n in range(5)]
    assert loader_states(tab)[-1][0] == "running" and not tab.of_type("execution_error")


def test_the_collector_freeze_is_applied_once_at_start(comfy: Comfy) -> None:
    frozen = [line for line in comfy.log_text().splitlines() if "objects alive at start" in line]
    assert len(frozen) == 1, comfy.log_text()[-2000:]
    assert int(frozen[0].split("clientid_bridge: ")[1].split()[0]) > 100_000
