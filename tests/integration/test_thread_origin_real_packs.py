"""On a real ComfyUI: what threads of node code send reaches the tab whose prompt started them.

- The real VRGDG node (vrgamegirl19/comfyui-vrgamedevgirl, `VRGDG_SetGroupStateMulti`,
  `queue_delay_seconds` = 1) sends `impact-add-queue` from a thread it starts. Two
  websocket clients answer that event as the Impact Pack's js/common.js does (it calls
  `app.queuePrompt(0, 1)`: the tab POSTs its own workflow with its own client id).
- Our pack tests/integration/packs/thread_pool_pack hands a broadcast to a one-thread
  pool: the second tab's task runs on the thread the first tab's did.

The VRGDG pack is real, fetched from GitHub and never committed: put it in $CIB_AUTH_PACKS
(default ~/comfy/packs, the auth packs' folder) as comfyui-vrgamedevgirl/. It loads without
its requirements (it skips the submodules whose imports fail); the tests that need it skip
and say why when it or its node is not there. One server with the package, and one with
its threads part switched off (COMFY_CLIENTID_BRIDGE_THREADS=0), per ComfyUI.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from integration.cli_support import SLOW_PACK
from integration.support import require_comfyui

from comfy_clientid_bridge.tools.demo import post, wait_idle
from comfy_clientid_bridge.tools.launcher import REPO, Comfy, ComfyCell, Tab, running_comfyui

pytestmark = pytest.mark.integration

PACKS = Path(os.environ.get("CIB_AUTH_PACKS") or Path.home() / "comfy" / "packs")
VRGDG = PACKS / "comfyui-vrgamedevgirl"
VRGDG_NODE = "VRGDG_SetGroupStateMulti"
POOL_PACK = Path(__file__).parent / "packs" / "thread_pool_pack"
DELAY = 1.0  # the VRGDG node's queue_delay_seconds
THREADS_OFF = {"COMFY_CLIENTID_BRIDGE_THREADS": "0"}


def packs() -> list[Path]:
    """Ours, the pool pack, the pause node; the real VRGDG pack when it is here."""
    found = [REPO, POOL_PACK, SLOW_PACK]
    return [*found, VRGDG] if (VRGDG / "VRGDG_GeneralNodes2.py").is_file() else found


def server_fixture(env: dict[str, str] | None) -> Any:
    @pytest.fixture(scope="module")
    def comfy(tmp_path_factory: pytest.TempPathFactory, comfyui_cell: ComfyCell) -> Iterator[Comfy]:
        require_comfyui()
        with running_comfyui(tmp_path_factory.mktemp("comfy"), packs=packs(), env=env) as running:
            yield running

    return comfy


with_package = server_fixture(None)
threads_off = server_fixture(THREADS_OFF)


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json()


async def require_vrgdg(comfy: Comfy) -> None:
    if not (VRGDG / "VRGDG_GeneralNodes2.py").is_file():
        pytest.skip(f"threads tier: no comfyui-vrgamedevgirl at {VRGDG} (set CIB_AUTH_PACKS)")
    if VRGDG_NODE not in await get_json(f"{comfy.url}/object_info/{VRGDG_NODE}"):
        pytest.skip(f"threads tier: {VRGDG_NODE} did not load (see the ComfyUI log)")


def vrgdg_graph(marker: str) -> dict[str, Any]:
    """EmptyImage -> the VRGDG node, set to queue the next run after DELAY seconds.

    `marker` goes into a widget the node ignores here, so the graph is new to ComfyUI's
    cache; the tab's answer re-queues the same graph, which is then cached whole and the
    node does not run again: the chain stops after one answer."""
    widgets: dict[str, Any] = {}
    for slot in range(1, 13):
        widgets[f"group_{slot}"] = "<none>"
        widgets[f"group_{slot}_action"] = "mute"
    inputs = {
        "signal": ["1", 0],
        "group_count": 1,
        "group_action": "mute",
        "auto_queue_next": True,
        "queue_delay_seconds": DELAY,
        "node_ids_csv": marker,
        "group_targets_json": json.dumps([{"action": "active", "node_ids": [1]}]),
        **widgets,
    }
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": VRGDG_NODE, "inputs": inputs},
    }


def own_graph(prefix: str, pause: float = 0.0) -> dict[str, Any]:
    """A tab's own workflow: EmptyImage -> (a pause) -> SaveImage."""
    source = ["1", 0]
    graph: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": source, "filename_prefix": prefix}},
    }
    if pause:
        graph["3"] = {"class_type": "ClientIdBridgeTest_Pause", "inputs": {"image": source}}
        graph["3"]["inputs"]["seconds"] = pause
        graph["2"]["inputs"]["images"] = ["3", 0]
    return graph


@dataclass
class AnsweringTab:
    """A websocket client that answers `impact-add-queue` as the Impact Pack's js/common.js
    does: it queues its own workflow with its own client id (at most `answers` times)."""

    tab: Tab
    workflow: dict[str, Any]
    answers: int = 1
    queued: list[str] = field(default_factory=list)
    received: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    async def listen(self, session: aiohttp.ClientSession) -> None:
        assert self.tab._ws is not None
        async for message in self.tab._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(message.data)
            self.received.append((time.monotonic(), event["type"], event.get("data") or {}))
            if event["type"] == "impact-add-queue" and len(self.queued) < self.answers:
                body = {"prompt": self.workflow, "client_id": self.tab.client_id}
                self.queued.append(await post(session, self.tab.url, body))

    def times(self, kind: str) -> list[float]:
        return [at for at, seen, _ in self.received if seen == kind]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [data for _, seen, data in self.received if seen == kind]


async def two_tabs_run(
    comfy: Comfy, first: dict[str, Any], then: dict[str, Any] | None, b_workflow: dict[str, Any]
) -> tuple[AnsweringTab, AnsweringTab]:
    """Tab A queues `first`; tab B queues `then` right after (if any); both answer
    `impact-add-queue` once with their own workflow, and ComfyUI runs until it idles. Tab
    A's answer re-queues the VRGDG graph: cached whole when nothing ran in between, run
    again (one more event, not answered) when tab B's prompt did."""
    async with aiohttp.ClientSession() as session:
        tab_a = AnsweringTab(await Tab(session, comfy.url, uuid.uuid4().hex).open(), first)
        tab_b = AnsweringTab(await Tab(session, comfy.url, uuid.uuid4().hex).open(), b_workflow)
        listeners = [asyncio.create_task(tab.listen(session)) for tab in (tab_a, tab_b)]
        await post(session, comfy.url, {"prompt": first, "client_id": tab_a.tab.client_id})
        if then is not None:
            await post(session, comfy.url, {"prompt": then, "client_id": tab_b.tab.client_id})
        await asyncio.sleep(DELAY + 0.5)  # the node's thread fires, the tabs answer
        await wait_idle(session, comfy.url)
        for tab in (tab_a, tab_b):
            await tab.tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)
    return tab_a, tab_b


async def test_vrgdg_s_delayed_add_queue_makes_only_tab_a_queue(with_package: Comfy) -> None:
    await require_vrgdg(with_package)
    marker = uuid.uuid4().hex[:8]
    tab_a, tab_b = await two_tabs_run(
        with_package, vrgdg_graph(marker), None, own_graph(f"B_{marker}")
    )
    assert tab_a.of_type("impact-add-queue") and len(tab_a.queued) == 1
    assert tab_b.of_type("impact-add-queue") == [] and tab_b.queued == []
    status = await get_json(f"{with_package.url}/clientid_bridge/status")
    assert status["threads"]["tied_threads"] >= 1
    assert status["routed_from_threads"] >= 1


async def test_vrgdg_s_event_reaches_tab_a_while_tab_b_s_prompt_runs(with_package: Comfy) -> None:
    await require_vrgdg(with_package)
    marker = uuid.uuid4().hex[:8]
    slow_b = own_graph(f"Bslow_{marker}", pause=DELAY + 1.5)
    tab_a, tab_b = await two_tabs_run(
        with_package, vrgdg_graph(marker), slow_b, own_graph(f"B_{marker}")
    )
    fired = tab_a.times("impact-add-queue")[0]  # (tab A's answer runs the node again)
    [b_started], [b_done] = tab_b.times("execution_start"), tab_b.times("execution_success")
    assert b_started < fired < b_done  # tab B's prompt ran when the thread fired
    assert tab_b.of_type("impact-add-queue") == [] and tab_b.queued == []
    assert len(tab_a.queued) == 1


async def test_without_the_threads_part_tab_b_queues_too(threads_off: Comfy) -> None:
    await require_vrgdg(threads_off)
    marker = uuid.uuid4().hex[:8]
    tab_a, tab_b = await two_tabs_run(
        threads_off, vrgdg_graph(marker), None, own_graph(f"B_{marker}")
    )
    assert len(tab_a.queued) == 1
    assert tab_b.of_type("impact-add-queue") and len(tab_b.queued) == 1
    history = await get_json(f"{threads_off.url}/history/{tab_b.queued[0]}")
    assert history[tab_b.queued[0]]["prompt"][3]["client_id"] == tab_b.tab.client_id


def pool_graph(marker: str, pause: float) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {
            "class_type": "CIBPoolBroadcast",
            "inputs": {"images": ["1", 0], "marker": marker, "pause": pause},
        },
    }


async def pool_run(comfy: Comfy) -> tuple[AnsweringTab, AnsweringTab, str]:
    """Tab A's task pauses on the pool's one thread while tab B's prompt queues its own."""
    marker = uuid.uuid4().hex[:8]
    tab_a, tab_b = await two_tabs_run(
        comfy, pool_graph(f"A_{marker}", DELAY), pool_graph(f"B_{marker}", 0.0), {}
    )
    return tab_a, tab_b, marker


def markers(tab: AnsweringTab) -> list[str]:
    return sorted(event["marker"] for event in tab.of_type("cib-pool-event"))


async def test_a_pool_thread_reused_by_tab_b_routes_each_task_to_its_own_tab(
    with_package: Comfy,
) -> None:
    tab_a, tab_b, marker = await pool_run(with_package)
    assert markers(tab_a) == [f"A_{marker}"] and markers(tab_b) == [f"B_{marker}"]
    threads = {e["thread"] for tab in (tab_a, tab_b) for e in tab.of_type("cib-pool-event")}
    assert len(threads) == 1  # one pool thread ran both tabs' tasks
    status = await get_json(f"{with_package.url}/clientid_bridge/status")
    assert status["threads"]["tied_tasks"] >= 2


async def test_without_the_threads_part_pool_events_reach_every_tab(threads_off: Comfy) -> None:
    tab_a, tab_b, marker = await pool_run(threads_off)
    both = [f"A_{marker}", f"B_{marker}"]
    assert markers(tab_a) == both and markers(tab_b) == both
