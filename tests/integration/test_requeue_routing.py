"""On a real ComfyUI: naive re-queues reach the tab that started them, and only that tab."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from integration.support import comfy_fixture

from comfy_clientid_bridge.tools.demo import ITERATIONS, WORKFLOW, run_batch
from comfy_clientid_bridge.tools.launcher import (
    NAIVE_PACK,
    REPO,
    ROUTED,
    Comfy,
    Tab,
)

pytestmark = pytest.mark.integration
MODES = ["uuid4", "none", "timer"]


with_bridge = comfy_fixture(REPO, NAIVE_PACK)
without_bridge = comfy_fixture(NAIVE_PACK)


def executed_by(tab: Tab, node: str) -> list[dict[str, Any]]:
    """`executed` events for `node` ("2" is core SaveImage in the demo graph)."""
    return [event for event in tab.of_type("executed") if event["node"] == node]


@pytest.mark.parametrize("mode", MODES)
async def test_every_iteration_reaches_its_tab_only(with_bridge: Comfy, mode: str) -> None:
    run = await run_batch(with_bridge, mode)
    tab_a, tab_b, batch = run.tab_a, run.tab_b, run.batch

    assert len(batch) == ITERATIONS
    assert len(tab_a.of_type("execution_start")) == ITERATIONS
    assert len(executed_by(tab_a, "2")) == ITERATIONS  # core SaveImage, every iteration
    assert len(tab_a.of_type("execution_success")) == ITERATIONS
    assert tab_a.prompt_ids(ROUTED) == set(batch)  # nothing routed of the outside prompt
    assert not tab_b.prompt_ids() & set(batch)  # tab B: not even progress of A's batch
    assert not tab_b.prompt_ids(ROUTED)


# That secrets are never copied is tested where it can fail, on the JSON the bridge hands
# ComfyUI (tests/test_bridge.py): ComfyUI strips api_key_comfy_org from what it keeps, so
# the history here would hold none with or without us.
@pytest.mark.parametrize("mode", MODES)
async def test_workflow_is_carried_into_every_iteration(with_bridge: Comfy, mode: str) -> None:
    run = await run_batch(with_bridge, mode)
    for entry in run.batch.values():
        extra = entry["prompt"][3]
        assert extra["extra_pnginfo"]["workflow"] == WORKFLOW
    requeued = [e for e in run.batch.values() if e["prompt"][2]["3"]["inputs"]["index"]]
    assert len(requeued) == ITERATIONS - 1
    images = sorted(with_bridge.output.glob(f"{run.prefix}_*.png"))
    assert len(images) == ITERATIONS
    assert all(b"tEXtworkflow" in image.read_bytes() for image in images)


@pytest.mark.parametrize("mode", MODES)
async def test_control_without_the_bridge_the_tab_goes_dark(
    without_bridge: Comfy, mode: str
) -> None:
    run = await run_batch(without_bridge, mode)
    tab_a, tab_b = run.tab_a, run.tab_b
    assert len(run.batch) == ITERATIONS  # the loop ran ...
    assert len(executed_by(tab_a, "2")) == 1  # ... but tab A saw only the first image
    assert len(tab_a.of_type("execution_success")) == 1
    if mode == "none":  # core broadcasts progress of client-less prompts: tab B sees A's loop
        assert tab_b.prompt_ids() & set(run.batch)


async def bridge_status(comfy: Comfy) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{comfy.url}/api/clientid_bridge/status") as response:
            assert response.status == 200
            status: dict[str, Any] = await response.json()
            return status


async def test_status_route_counts_and_log_lines(with_bridge: Comfy) -> None:
    """One batch of its own: its re-queues are counted once each and logged once each."""
    before, lines_before = await bridge_status(with_bridge), with_bridge.log_text()
    await run_batch(with_bridge, "none")
    after, log = await bridge_status(with_bridge), with_bridge.log_text()

    assert after["enabled"] is True
    assert after["counts"]["rewrite"] - before["counts"]["rewrite"] == ITERATIONS - 1
    assert "secret" not in json.dumps(after)
    new_lines = log[len(lines_before) :]
    assert new_lines.count("clientid_bridge: prompt") == ITERATIONS - 1
    assert "comfy_clientid_bridge/" not in log  # no traceback through our code
