"""On a real ComfyUI: naive re-queues reach the tab that started them, and only that tab."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from integration.comfyui import (
    REPO,
    REQUEUE_PACK,
    ROUTED,
    Comfy,
    Tab,
    find_comfyui,
    running_comfyui,
)

pytestmark = pytest.mark.integration
ITERATIONS = 4
MODES = ["uuid4", "none", "timer"]
WORKFLOW = {"last_node_id": 3, "nodes": [], "links": [], "extra": {"marker": "tab-a-ui"}}


@pytest.fixture(scope="module")
def comfy_paths() -> None:
    found = find_comfyui()
    if isinstance(found, str):
        pytest.skip(f"integration tier: {found}")


@pytest.fixture(scope="module")
def with_bridge(comfy_paths: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Comfy]:
    with running_comfyui(tmp_path_factory.mktemp("with"), packs=[REPO, REQUEUE_PACK]) as comfy:
        yield comfy


@pytest.fixture(scope="module")
def without_bridge(comfy_paths: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Comfy]:
    with running_comfyui(tmp_path_factory.mktemp("without"), packs=[REQUEUE_PACK]) as comfy:
        yield comfy


def loop_graph(mode: str, prefix: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        "3": {
            "class_type": "ClientIdBridgeTestNaiveRequeue",
            "inputs": {"images": ["1", 0], "index": 0, "total": ITERATIONS, "mode": mode, "color_node": "1"},
        },
    }


def single_graph(prefix: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with session.post(f"{url}/api/prompt", json=body) as response:
        answer = await response.json()
        assert response.status == 200, answer
        return str(answer["prompt_id"])


async def wait_idle(session: aiohttp.ClientSession, url: str, timeout: float = 90) -> None:
    """Queue empty three polls in a row (longer than the timer mode's 0.2 s delay)."""
    quiet, deadline = 0, asyncio.get_running_loop().time() + timeout
    while quiet < 3:
        assert asyncio.get_running_loop().time() < deadline, "ComfyUI queue never went idle"
        async with session.get(f"{url}/queue") as response:
            queue = await response.json()
        busy = queue["queue_running"] or queue["queue_pending"]
        quiet = 0 if busy else quiet + 1
        await asyncio.sleep(0.3)


async def history(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/history?max_items=200") as response:
        return dict(await response.json())


def prompts_saving(entries: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {
        pid: entry for pid, entry in entries.items()
        if entry["prompt"][2].get("2", {}).get("inputs", {}).get("filename_prefix") == prefix
    }


async def run_batch(comfy: Comfy, mode: str) -> dict[str, Any]:
    """Tab A starts a batch, tab B idles, an outside script queues its own prompt midway."""
    tag = uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession() as session:
        tab_a = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        tab_b = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listeners = [asyncio.create_task(tab.listen()) for tab in (tab_a, tab_b)]
        body = {
            "prompt": loop_graph(mode, f"A_{mode}_{tag}"),
            "client_id": tab_a.client_id,
            "extra_data": {"extra_pnginfo": {"workflow": WORKFLOW}, "api_key_comfy_org": "secret"},
        }
        await post(session, comfy.url, body)
        await asyncio.sleep(0.1)
        outside_id = await post(session, comfy.url, {"prompt": single_graph(f"OUT_{tag}")})
        await wait_idle(session, comfy.url)
        await asyncio.sleep(0.3)
        entries = await history(session, comfy.url)
        for tab in (tab_a, tab_b):
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)
    batch = prompts_saving(entries, f"A_{mode}_{tag}")
    return {"a": tab_a, "b": tab_b, "outside": outside_id, "batch": batch, "tag": tag}


def executed_by(tab: Tab, node: str) -> list[dict[str, Any]]:
    return [event for event in tab.of_type("executed") if event["node"] == node]


@pytest.mark.parametrize("mode", MODES)
async def test_every_iteration_reaches_its_tab_only(with_bridge: Comfy, mode: str) -> None:
    result = await run_batch(with_bridge, mode)
    tab_a, tab_b, batch = result["a"], result["b"], result["batch"]

    assert len(batch) == ITERATIONS
    assert len(tab_a.of_type("execution_start")) == ITERATIONS
    assert len(executed_by(tab_a, "2")) == ITERATIONS  # core SaveImage, every iteration
    assert len(tab_a.of_type("execution_success")) == ITERATIONS
    assert tab_a.prompt_ids(ROUTED) == set(batch)  # nothing routed of the outside prompt
    assert not tab_b.prompt_ids() & set(batch)  # tab B: not even progress of A's batch
    assert not tab_b.prompt_ids(ROUTED)


@pytest.mark.parametrize("mode", MODES)
async def test_workflow_is_carried_and_secrets_are_not(with_bridge: Comfy, mode: str) -> None:
    result = await run_batch(with_bridge, mode)
    for entry in result["batch"].values():
        extra = entry["prompt"][3]
        assert extra["extra_pnginfo"]["workflow"] == WORKFLOW
    requeued = [e["prompt"][3] for e in result["batch"].values() if e["prompt"][2]["3"]["inputs"]["index"]]
    assert len(requeued) == ITERATIONS - 1
    assert all("api_key_comfy_org" not in extra for extra in requeued)
    images = sorted(with_bridge.output.glob(f"A_{mode}_{result['tag']}_*.png"))
    assert len(images) == ITERATIONS
    assert all(b"tEXtworkflow" in image.read_bytes() for image in images)


@pytest.mark.parametrize("mode", MODES)
async def test_control_without_the_bridge_the_tab_goes_dark(without_bridge: Comfy, mode: str) -> None:
    result = await run_batch(without_bridge, mode)
    tab_a, tab_b = result["a"], result["b"]
    assert len(result["batch"]) == ITERATIONS  # the loop ran ...
    assert len(executed_by(tab_a, "2")) == 1  # ... but tab A saw only the first image
    assert len(tab_a.of_type("execution_success")) == 1
    if mode == "none":  # core broadcasts progress of client-less prompts: tab B sees A's loop
        assert tab_b.prompt_ids() & set(result["batch"])


async def test_status_route_counts_and_log_lines(with_bridge: Comfy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{with_bridge.url}/api/clientid_bridge/status") as response:
            status = await response.json()
    assert status["enabled"] is True
    assert status["counts"]["rewrite"] >= ITERATIONS - 1
    assert "secret" not in json.dumps(status)
    log = with_bridge.log_text()
    assert "comfy_clientid_bridge/" not in log  # no traceback through our code
    assert log.count("clientid_bridge: prompt") == status["counts"]["rewrite"]
    assert Path(with_bridge.log).exists()
