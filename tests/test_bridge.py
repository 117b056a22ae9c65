"""The bridge's behaviour table, against a small app playing ComfyUI's /prompt contract."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from fake_comfy import (
    SECRETS,
    TAB_A,
    TAB_B,
    WORKER_THREAD,
    WORKFLOW,
    FakeComfy,
    bridge_of,
    comfy_of,
    create_app,
    graph,
    post_from_outside,
    post_from_thread,
    running,
)

from comfy_clientid_bridge.routing.lineage import (
    Ledger,
    PromptRecord,
    changed_widgets,
    closest_ancestor,
)

PATHS = pytest.mark.parametrize("path", ["/prompt", "/api/prompt"], ids=["prompt", "api-prompt"])
STALE = "f" * 32

# (who, body sent, client running now, client_id the handler must see, workflow carried)
CASES = [
    ("browser", {"client_id": TAB_B}, TAB_A, TAB_B, False),
    ("outside", {}, TAB_A, None, False),
    ("outside", {"client_id": STALE}, TAB_A, STALE, False),
    ("node", {}, TAB_A, TAB_A, True),
    ("node", {"client_id": STALE}, TAB_A, TAB_A, True),
    ("node", {"client_id": TAB_B}, TAB_A, TAB_B, False),
    ("node", {}, None, None, False),
    ("node", {"client_id": STALE}, None, STALE, False),
]
IDS = [
    "browser-live-client-untouched",
    "outside-script-no-client-untouched",
    "outside-script-stale-client-untouched",
    "node-no-client-gets-origin",
    "node-stale-client-gets-origin",
    "node-live-client-kept",
    "node-origin-without-client-untouched",
    "node-stale-origin-without-client-untouched",
]


async def send(server: TestServer, who: str, path: str, body: Any) -> tuple[int, bytes]:
    url = str(server.make_url(path))
    if who == "node":
        return await post_from_thread(url, body)
    origin = str(server.make_url("")) if who == "browser" else ""
    return await post_from_outside(url, body, origin=origin)


@PATHS
@pytest.mark.parametrize(("who", "extra", "origin_client", "expected", "carried"), CASES, ids=IDS)
async def test_routing_table(
    comfy_server: TestServer,
    path: str,
    who: str,
    extra: dict[str, Any],
    origin_client: str | None,
    expected: str | None,
    carried: bool,
) -> None:
    comfy_of(comfy_server).running = running(origin_client)
    body = {"prompt": graph(1), **extra}

    status, _ = await send(comfy_server, who, path, body)

    assert status == 200
    [received] = comfy_of(comfy_server).received
    assert received.get("client_id") == expected
    pnginfo = received.get("extra_data", {}).get("extra_pnginfo")
    assert pnginfo == ({"workflow": WORKFLOW} if carried else None)
    assert received["prompt"] == body["prompt"]


async def test_outside_requests_are_not_counted_as_programmatic(comfy_server: TestServer) -> None:
    await send(comfy_server, "outside", "/prompt", {"prompt": graph()})
    counts = bridge_of(comfy_server).counts
    assert (counts["submissions"], counts["programmatic"]) == (1, 0)


async def test_timer_after_node_returned_follows_its_graph_not_the_running_prompt(
    comfy_server: TestServer,
) -> None:
    url = str(comfy_server.make_url("/prompt"))
    await post_from_outside(url, {"prompt": graph(0, "tabA"), "client_id": TAB_A})
    await post_from_outside(url, {"prompt": graph(0, "tabB"), "client_id": TAB_B})
    # Tab B's prompt runs when tab A's timer fires, 0.1 s after A's node returned.
    comfy_of(comfy_server).running = running(TAB_B, 0, "tabB")

    await post_from_thread(url, {"prompt": graph(1, "tabA")}, thread_name="Thread-7", delay=0.1)

    assert comfy_of(comfy_server).received[-1]["client_id"] == TAB_A
    assert bridge_of(comfy_server).recent[-1]["origin_prompt_id"] == "p1"  # A's, as answered


async def test_a_tabs_refused_submission_is_not_remembered(comfy_server: TestServer) -> None:
    url = str(comfy_server.make_url("/prompt"))
    await post_from_outside(url, {"prompt": graph(0, "reject"), "client_id": TAB_A})
    status, _ = await post_from_outside(url, {"prompt": graph(0, "reject"), "client_id": TAB_B})
    assert status == 400
    assert len(bridge_of(comfy_server).ledger) == 0  # what ComfyUI refused is forgotten


async def test_a_refused_node_code_submission_leaves_the_ledger(comfy_server: TestServer) -> None:
    """Node code's re-queue enters the ledger when decided; ComfyUI refuses it: it goes."""
    comfy_of(comfy_server).running = running(TAB_A)
    url = str(comfy_server.make_url("/prompt"))
    status, _ = await post_from_thread(url, {"prompt": graph(1, "reject")})
    assert status == 400
    bridge = bridge_of(comfy_server)
    assert comfy_of(comfy_server).received[-1]["client_id"] == TAB_A  # it was decided ...
    assert len(bridge.ledger) == 0  # ... and forgotten once refused
    assert [(d["action"], d["status"]) for d in bridge.recent] == [("rewrite", 400)]


async def test_an_unencodable_client_id_is_logged_escaped(
    comfy_server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON allows lone surrogates; a UTF-8 log file does not."""
    odd = "\udfffodd-tab-id"
    comfy_of(comfy_server).running = running(odd)
    with caplog.at_level(logging.INFO, logger="comfy_clientid_bridge"):
        await post_from_thread(str(comfy_server.make_url("/prompt")), {"prompt": graph(1)})
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    line.encode("utf-8")  # raises if the surrogate got through
    assert "\\udfffodd" in line


async def test_chain_iteration_inherits_from_the_previous_iteration(
    comfy_server: TestServer,
) -> None:
    url = str(comfy_server.make_url("/api/prompt"))
    comfy = comfy_of(comfy_server)
    comfy.running = running(TAB_A, 0)
    for index in range(1, 5):
        await post_from_thread(url, {"prompt": graph(index), "client_id": STALE})
        # Iteration k runs with what the bridge gave it; its node queues k + 1.
        sent = comfy.received[-1]
        comfy.running = running(sent["client_id"], index)
        comfy.running.extra_pnginfo = sent["extra_data"]["extra_pnginfo"]
    assert [r["client_id"] for r in comfy.received] == [TAB_A] * 4
    assert bridge_of(comfy_server).counts["rewrite"] == 4


async def test_own_workflow_and_other_extra_data_are_kept(comfy_server: TestServer) -> None:
    comfy = comfy_of(comfy_server)
    comfy.running = running(TAB_A)
    comfy.running.extra_pnginfo = {"workflow": WORKFLOW, **SECRETS}
    own = {"extra_pnginfo": {"workflow": {"own": True}}, "mine": 1}

    await post_from_thread(
        str(comfy_server.make_url("/prompt")), {"prompt": graph(1), "extra_data": own}
    )

    received = comfy.received[-1]
    assert received["extra_data"] == own
    assert received["client_id"] == TAB_A


@pytest.mark.parametrize("thread", [WORKER_THREAD, "Thread-7"], ids=["executing", "lineage"])
async def test_the_origins_workflow_is_copied_and_its_secrets_are_not(
    comfy_server: TestServer, thread: str
) -> None:
    """The copy branch runs: the re-queue has no workflow of its own. Its origin, a tab's
    prompt, carried secrets in extra_data; ComfyUI is handed the workflow and nothing else."""
    url = str(comfy_server.make_url("/prompt"))
    origin_extra = {"extra_pnginfo": {"workflow": WORKFLOW}, **SECRETS}
    origin = {"prompt": graph(0), "client_id": TAB_A, "extra_data": origin_extra}
    await post_from_outside(url, origin)
    comfy_of(comfy_server).running = running(TAB_A)

    await post_from_thread(url, {"prompt": graph(1)}, thread_name=thread)

    received = comfy_of(comfy_server).received[-1]
    assert received["client_id"] == TAB_A
    assert received["extra_data"] == {"extra_pnginfo": {"workflow": WORKFLOW}}
    assert all(secret not in json.dumps(received) for secret in SECRETS.values())
    [decision] = bridge_of(comfy_server).recent
    assert decision["action"] == "rewrite"
    assert all(secret not in json.dumps(decision) for secret in SECRETS.values())


async def test_secrets_never_reach_status_or_log(
    comfy_server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    comfy_of(comfy_server).running = running(TAB_A)
    body = {"prompt": graph(1), "extra_data": dict(SECRETS)}
    with caplog.at_level(logging.DEBUG, logger="comfy_clientid_bridge"):
        await post_from_thread(str(comfy_server.make_url("/prompt")), body)
        status = await _client_get(comfy_server, "/clientid_bridge/status")
    text = json.dumps(status) + caplog.text
    assert all(secret not in text for secret in SECRETS.values())
    assert TAB_A not in text  # client ids appear shortened only


async def _client_get(server: TestServer, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(server.make_url(path)) as response:
        assert response.status == 200
        return await response.json()


async def test_one_info_line_per_rewrite_with_prompt_id_and_reason(
    comfy_server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    comfy_of(comfy_server).running = running(TAB_A)
    with caplog.at_level(logging.INFO, logger="comfy_clientid_bridge"):
        await post_from_thread(str(comfy_server.make_url("/prompt")), {"prompt": graph(1)})
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "p1" in line and "no client_id" in line and "running-0" in line and TAB_A[:8] in line


async def test_status_route_reports_counts_and_recent_decisions(comfy_server: TestServer) -> None:
    comfy_of(comfy_server).running = running(TAB_A)
    await post_from_thread(str(comfy_server.make_url("/prompt")), {"prompt": graph(1)})
    await post_from_thread(
        str(comfy_server.make_url("/prompt")), {"prompt": graph(1), "client_id": TAB_B}
    )
    status = await _client_get(comfy_server, "/api/clientid_bridge/status")
    assert status["enabled"] is True
    assert status["node_traffic"] is False  # this app routes no broadcasts
    assert status["counts"] == {
        "submissions": 2,
        "programmatic": 2,
        "rewrite": 1,
        "keep": 1,
        "untouched": 0,
    }
    assert [d["action"] for d in status["recent"]] == ["rewrite", "keep"]
    assert status["recent"][0]["thread"] == WORKER_THREAD


@pytest.mark.parametrize(
    ("thread", "reason"),
    [
        (WORKER_THREAD, "no client_id; origin by executing prompt"),
        ("Thread-7", "no client_id; origin by graph lineage"),
    ],
    ids=["executing", "lineage"],
)
async def test_a_decision_says_how_its_origin_was_found(
    comfy_server: TestServer, thread: str, reason: str
) -> None:
    url = str(comfy_server.make_url("/prompt"))
    await post_from_outside(url, {"prompt": graph(0), "client_id": TAB_A})
    comfy_of(comfy_server).running = running(TAB_A)
    await post_from_thread(url, {"prompt": graph(1)}, thread_name=thread)
    [decision] = bridge_of(comfy_server).recent
    assert (decision["action"], decision["reason"]) == ("rewrite", reason)


async def test_a_workflow_is_added_to_the_re_queues_own_pnginfo(comfy_server: TestServer) -> None:
    comfy_of(comfy_server).running = running(TAB_A)
    own = {"extra_pnginfo": {"other": 1}}
    await post_from_thread(
        str(comfy_server.make_url("/prompt")), {"prompt": graph(1), "extra_data": own}
    )
    received = comfy_of(comfy_server).received[-1]
    assert received["extra_data"] == {"extra_pnginfo": {"other": 1, "workflow": WORKFLOW}}


async def test_the_status_counts_the_remembered_prompts(comfy_server: TestServer) -> None:
    url = str(comfy_server.make_url("/prompt"))
    await post_from_outside(url, {"prompt": graph(0), "client_id": TAB_A})
    status = await _client_get(comfy_server, "/clientid_bridge/status")
    assert status["remembered_prompts"] == 1


async def test_the_status_route_with_the_bridge_off(
    aiohttp_server: Any,
) -> None:
    server = await aiohttp_server(create_app(FakeComfy(), bridge_on=False))
    assert await _client_get(server, "/clientid_bridge/status") == {"enabled": False}


# Lineage, as the bridge uses it to find the origin of a re-queue from a timer thread.


def record(client: str | None, nodes: dict[str, tuple[str, dict[str, Any]]]) -> PromptRecord:
    body = {
        node_id: {"class_type": kind, "inputs": inputs} for node_id, (kind, inputs) in nodes.items()
    }
    return PromptRecord(client_id=client, graph=body)


@pytest.mark.parametrize(
    ("candidate", "qualifies"),
    [
        ({"1": ("Load", {"x": 5})}, True),
        ({"1": ("Other", {"x": 1})}, False),
        ({"2": ("Load", {"x": 1})}, False),
    ],
    ids=["same-shape", "other-class-type", "other-node-id"],
)
def test_only_a_graph_of_the_same_shape_is_an_ancestor(
    candidate: dict[str, tuple[str, dict[str, Any]]], qualifies: bool
) -> None:
    child = record(None, {"1": ("Load", {"x": 1})})
    found = closest_ancestor(child, [record(TAB_A, candidate)])
    assert (found is not None) is qualifies


def test_no_candidates_no_ancestor() -> None:
    assert closest_ancestor(record(None, {"1": ("Load", {})}), []) is None


def test_only_the_newest_prompt_of_each_tab_counts() -> None:
    child = record(None, {"1": ("Load", {"x": 1, "y": 1})})
    newest_a = record(TAB_A, {"1": ("Load", {"x": 9, "y": 9})})
    older_a = record(TAB_A, {"1": ("Load", {"x": 1, "y": 1})})  # closer, but not A's latest
    tab_b = record(TAB_B, {"1": ("Load", {"x": 9, "y": 1})})
    assert closest_ancestor(child, [newest_a, older_a, tab_b]) is tab_b


def test_a_widget_set_to_none_differs_from_a_missing_one() -> None:
    parent = record(None, {"1": ("Load", {"x": None})})
    child = record(None, {"1": ("Load", {})})
    assert changed_widgets(parent, child) == changed_widgets(child, parent) == {("1", "x")}


NODE_DECISIONS = [
    ({}, TAB_A, "rewrite", "no client_id; origin by executing prompt", TAB_A, "running-0"),
    (
        {"client_id": STALE},
        TAB_A,
        "rewrite",
        "stale client_id; origin by executing prompt",
        TAB_A,
        "running-0",
    ),
    ({"client_id": TAB_B}, TAB_A, "keep", "names a connected client", TAB_B, None),
    ({}, None, "untouched", "origin (executing prompt) has no client", None, "running-0"),
]


@pytest.mark.parametrize(
    ("extra", "origin_client", "action", "reason", "client", "origin_prompt"),
    NODE_DECISIONS,
    ids=["no-client", "stale-client", "live-client", "origin-without-client"],
)
async def test_each_decision_is_reported_as_it_was_made(
    comfy_server: TestServer,
    extra: dict[str, Any],
    origin_client: str | None,
    action: str,
    reason: str,
    client: str | None,
    origin_prompt: str | None,
) -> None:
    comfy_of(comfy_server).running = running(origin_client)
    before = time.time()
    await post_from_thread(str(comfy_server.make_url("/prompt")), {"prompt": graph(1), **extra})
    [entry] = bridge_of(comfy_server).recent
    at = entry.pop("at")
    assert isinstance(at, float) and before - 1 <= at <= time.time() + 1
    assert entry == {
        "action": action,
        "reason": reason,
        "prompt_id": "p1",
        "status": 200,
        "client": None if client is None else client[:8],
        "origin_prompt_id": origin_prompt,
        "thread": WORKER_THREAD,
    }
    assert bridge_of(comfy_server).counts[action] == 1


async def test_a_re_queue_with_no_origin_is_left_as_sent(comfy_server: TestServer) -> None:
    await post_from_thread(
        str(comfy_server.make_url("/prompt")), {"prompt": graph(1)}, thread_name="Thread-7"
    )
    [entry] = bridge_of(comfy_server).recent
    assert (entry["action"], entry["reason"], entry["origin_prompt_id"]) == (
        "untouched",
        "no origin prompt found",
        None,
    )
    assert "client_id" not in comfy_of(comfy_server).received[-1]


async def test_a_re_queue_remembers_what_its_origin_changed(comfy_server: TestServer) -> None:
    comfy_of(comfy_server).running = running(TAB_A, 0)
    await post_from_thread(str(comfy_server.make_url("/prompt")), {"prompt": graph(1)})
    [child] = bridge_of(comfy_server).ledger.newest_first()
    assert child.step == {("1", "color"), ("3", "index")}


def test_a_ledger_of_one_keeps_the_newest() -> None:
    ledger = Ledger(size=1)
    first, second = record(TAB_A, {}), record(TAB_B, {})
    ledger.add(first), ledger.add(second)
    assert ledger.newest_first() == [second]
    with pytest.raises(ValueError, match="ledger size must be >= 1"):
        Ledger(size=0)
