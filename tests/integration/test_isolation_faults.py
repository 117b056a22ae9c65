"""On a real ComfyUI: interleaved batches of three tabs stay apart, and a tab may drop out."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import aiohttp
import pytest
from integration.support import comfy_fixture

from comfy_clientid_bridge.tools.demo import (
    WORKFLOW,
    loop_graph,
    post,
    prompts_saving,
    single_graph,
)
from comfy_clientid_bridge.tools.launcher import (
    NAIVE_PACK,
    REPO,
    ROUTED,
    Comfy,
    Tab,
)

pytestmark = pytest.mark.integration

ITERATIONS = 20
IDLE_TABS = 20
OUTSIDE_PROMPTS = 4
MODES = ("uuid4", "none", "timer")  # how the naive pack re-queues: one per tab


comfy = comfy_fixture(REPO, NAIVE_PACK)


async def history(session: aiohttp.ClientSession, comfy: Comfy) -> dict[str, Any]:
    async with session.get(f"{comfy.url}/history?max_items=500") as response:
        entries: dict[str, Any] = await response.json()
    return entries


async def wait_done(
    session: aiohttp.ClientSession, comfy: Comfy, expected: dict[str, int], timeout: float = 150
) -> dict[str, Any]:
    """History once it holds `expected` prompts per filename prefix, and not one more.

    Polling the queue for idleness would not do: an iteration runs in milliseconds, so
    the queue is empty most of the time while a timer-mode batch waits to re-queue.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        entries = await history(session, comfy)
        counts = {prefix: len(prompts_saving(entries, prefix)) for prefix in expected}
        if counts == expected:
            break
        assert loop.time() < deadline, f"batches did not finish: {counts} of {expected}"
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.0)  # longer than a re-queue delay: an extra iteration would show
    entries = await history(session, comfy)
    assert {prefix: len(prompts_saving(entries, prefix)) for prefix in expected} == expected
    return entries


def started_at(entry: dict[str, Any]) -> float:
    """When ComfyUI started the prompt, in seconds (history keeps its status messages)."""
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_start":
            return float(data["timestamp"]) / 1000
    raise AssertionError(f"no execution_start in {entry['status']}")


def routed_ids(tab: Tab, kind: str) -> set[str]:
    return tab.prompt_ids(frozenset({kind}))


def images_seen(tab: Tab) -> int:
    return len([event for event in tab.of_type("executed") if event["node"] == "2"])


def indices(batch: dict[str, Any]) -> list[int]:
    return sorted(int(entry["prompt"][2]["3"]["inputs"]["index"]) for entry in batch.values())


async def test_interleaved_batches_reach_only_their_own_tabs(comfy: Comfy) -> None:
    tag = uuid.uuid4().hex[:6]
    prefixes = {mode: f"ISO_{mode}_{tag}" for mode in MODES}
    async with aiohttp.ClientSession() as session:
        tabs = {mode: await Tab(session, comfy.url, uuid.uuid4().hex).open() for mode in MODES}
        idle = [await Tab(session, comfy.url, uuid.uuid4().hex).open() for _ in range(IDLE_TABS)]
        outside = await Tab(session, comfy.url, f"script-{uuid.uuid4().hex}").open()
        everyone = [*tabs.values(), *idle, outside]
        listeners = [asyncio.create_task(tab.listen()) for tab in everyone]

        def start(mode: str) -> dict[str, Any]:
            extra = {"extra_pnginfo": {"workflow": {**WORKFLOW, "tab": mode}}}
            graph = loop_graph(mode, prefixes[mode], ITERATIONS)
            return {"prompt": graph, "client_id": tabs[mode].client_id, "extra_data": extra}

        # The three tabs press "Queue" at once; their iterations then share the queue.
        await asyncio.gather(*(post(session, comfy.url, start(mode)) for mode in MODES))
        outside_ids = set()
        for number in range(OUTSIDE_PROMPTS):  # an API script with its own websocket
            await asyncio.sleep(0.5)
            body = {
                "prompt": single_graph(f"ISO_OUT_{tag}_{number}"),
                "client_id": outside.client_id,
            }
            outside_ids.add(await post(session, comfy.url, body))
        expected = {prefix: ITERATIONS for prefix in prefixes.values()}
        expected |= {f"ISO_OUT_{tag}_{number}": 1 for number in range(OUTSIDE_PROMPTS)}
        entries = await wait_done(session, comfy, expected)
        for tab in everyone:
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)

    batches = {mode: prompts_saving(entries, prefixes[mode]) for mode in MODES}
    for mode, tab in tabs.items():
        own = set(batches[mode])
        assert indices(batches[mode]) == list(range(ITERATIONS)), mode
        assert tab.prompt_ids(ROUTED) == own, mode  # every routed event of its own, no other
        assert tab.prompt_ids() <= own, mode  # not even progress of another's prompt
        assert len(tab.of_type("execution_start")) == ITERATIONS, mode
        assert len(tab.of_type("execution_success")) == ITERATIONS, mode
        assert images_seen(tab) == ITERATIONS, mode
        assert not tab.of_type("execution_error"), mode
    assert outside.prompt_ids(ROUTED) == outside_ids
    assert outside.prompt_ids() <= outside_ids
    assert len(outside.of_type("execution_success")) == OUTSIDE_PROMPTS
    for tab in idle:
        assert not tab.prompt_ids()  # nothing of anybody's prompts

    # The timer tab's re-queues came from a timer thread while other tabs' prompts ran: the
    # timer acts for the prompt that started it (routing/thread_origin.py), so the bridge knew
    # their origin exactly among three batches of the same shape, without graph lineage.
    timer_tab = tabs["timer"].client_id[:8]
    by_origin = (
        rf"rewrite -> client {timer_tab} \(origin \S+; no client_id; origin by thread's origin\)"
    )
    assert len(re.findall(by_origin, comfy.log_text())) == ITERATIONS - 1
    assert "origin by graph lineage" not in comfy.log_text()

    # The batches did interleave: in start order, the owner changed most of the time.
    order = sorted(
        (started_at(entry), mode) for mode, batch in batches.items() for entry in batch.values()
    )
    switches = sum(a[1] != b[1] for a, b in zip(order, order[1:], strict=False))
    assert switches >= ITERATIONS, order


async def test_tab_closing_mid_batch_drops_events_and_a_reconnect_gets_the_rest(
    comfy: Comfy,
) -> None:
    prefix = f"ISO_drop_{uuid.uuid4().hex[:6]}"
    client_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        first = await Tab(session, comfy.url, client_id).open()
        witness = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listeners = [asyncio.create_task(tab.listen()) for tab in (first, witness)]
        # Timer mode: each iteration re-queues 0.2 s after it ran, which paces the batch.
        body = {"prompt": loop_graph("timer", prefix, ITERATIONS), "client_id": client_id}
        await post(session, comfy.url, body)
        deadline = time.monotonic() + 30
        while images_seen(first) < 4:  # the first 4 iterations reach the tab
            assert time.monotonic() < deadline, f"the tab saw {images_seen(first)} of 4 images"
            await asyncio.sleep(0.05)
        await first.close()  # the tab goes away mid-batch
        await asyncio.sleep(1.5)  # iterations run meanwhile, for nobody
        second = await Tab(session, comfy.url, client_id).open()  # reload: same client id
        reconnected_at = time.time()
        listeners.append(asyncio.create_task(second.listen()))
        entries = await wait_done(session, comfy, {prefix: ITERATIONS})
        for tab in (second, witness):
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)

    batch = prompts_saving(entries, prefix)
    assert indices(batch) == list(range(ITERATIONS))  # the batch went on to the end
    seen_first, seen_second = first.prompt_ids(ROUTED), second.prompt_ids(ROUTED)
    assert seen_first | seen_second <= set(batch)
    assert set(batch) - seen_first - seen_second  # some ran while nobody listened: dropped
    later = {prompt_id for prompt_id, entry in batch.items() if started_at(entry) > reconnected_at}
    assert len(later) >= 3, "the tab came back too late to test anything"
    # Every iteration that started after the reconnect reached the new connection in full.
    assert later <= routed_ids(second, "execution_start")
    assert later <= routed_ids(second, "execution_success")
    assert len([e for e in second.of_type("executed") if e["prompt_id"] in later]) >= len(later)
    assert not witness.prompt_ids()
    assert "comfy_clientid_bridge" not in comfy.log_text()  # no traceback through our code
