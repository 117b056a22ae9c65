"""Node code's broadcasts and queue puts: behaviour tables, driven from real named threads."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from comfy_clientid_bridge import internals
from comfy_clientid_bridge.routing.broadcasts import (
    ENV_KEEP_BROADCAST,
    SERVER_EVENTS,
    BroadcastRouter,
    keep_broadcast_from,
    routing_send,
    routing_send_sync,
)
from comfy_clientid_bridge.routing.queue_puts import QueuePutRouter, Running, routing_put

WORKER = "Thread-7 (prompt_worker)"
TAB_A, GONE = "a" * 32, "g" * 32
PREVIEW_IMAGE = 1  # server.BinaryEventTypes.PREVIEW_IMAGE: binary events are ints
WORKFLOW = {"workflow": {"nodes": [], "links": []}}


def on_thread(name: str, call: Callable[[], Any]) -> Any:
    """Runs `call` on a thread with this name, as ComfyUI's executor or another thread."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), name=name)
    thread.start()
    thread.join()
    return result[0]


def router(running: str | None = TAB_A, keep: frozenset[str] = SERVER_EVENTS) -> BroadcastRouter:
    return BroadcastRouter(
        running_client=lambda: running,
        is_connected=lambda client_id: client_id == TAB_A,
        on_worker_thread=internals.on_worker_thread,
        keep_broadcast=keep,
    )


def recording_send_sync(
    routed_by: BroadcastRouter,
) -> tuple[list[tuple[Any, Any, Any]], Callable[..., Any]]:
    sent: list[tuple[Any, Any, Any]] = []
    return sent, routing_send_sync(lambda e, d, sid=None: sent.append((e, d, sid)), routed_by)


SEND_CASES = [
    # (thread, running client, event, sid given, keep-list, expected sid)
    (WORKER, TAB_A, "executed", None, SERVER_EVENTS, TAB_A),
    (WORKER, TAB_A, "impact-add-queue", None, SERVER_EVENTS, TAB_A),
    (WORKER, TAB_A, PREVIEW_IMAGE, None, SERVER_EVENTS, TAB_A),
    (WORKER, GONE, "executed", None, SERVER_EVENTS, None),
    (WORKER, None, "executed", None, SERVER_EVENTS, None),
    ("Thread-3", TAB_A, "executed", None, SERVER_EVENTS, None),
    ("MainThread-like", TAB_A, "impact-add-queue", None, SERVER_EVENTS, None),
    (WORKER, TAB_A, "status", None, SERVER_EVENTS, None),
    (WORKER, TAB_A, "crystools.monitor", None, SERVER_EVENTS | {"crystools.monitor"}, None),
    (WORKER, TAB_A, "executed", "other-tab", SERVER_EVENTS, "other-tab"),
    ("Thread-3", TAB_A, "executed", "other-tab", SERVER_EVENTS, "other-tab"),
]
SEND_IDS = [
    "executor-connected-executed",
    "executor-connected-impact-add-queue",
    "executor-connected-binary",
    "executor-gone-client",
    "executor-no-client",
    "other-thread",
    "other-thread-impact-add-queue",
    "server-status-kept",
    "allow-listed-kept",
    "sid-given-executor",
    "sid-given-other-thread",
]


@pytest.mark.parametrize(
    ("thread", "running", "event", "sid", "keep", "expected"), SEND_CASES, ids=SEND_IDS
)
def test_send_sync_routes_node_broadcasts_to_the_running_tab(
    thread: str,
    running: str | None,
    event: Any,
    sid: str | None,
    keep: frozenset[str],
    expected: str | None,
) -> None:
    routed_by = router(running, keep)
    sent, send_sync = recording_send_sync(routed_by)
    data = {"node": "9", "output": {"images": []}}
    on_thread(thread, lambda: send_sync(event, data, sid))
    assert sent == [(event, data, expected)]  # event and data never change
    routed = expected is not None and sid is None
    assert routed_by.status()["routed_broadcasts"] == ({str(event): 1} if routed else {})


@pytest.mark.parametrize("call", ["positional", "keyword", "omitted"])
def test_send_sync_takes_sid_however_it_is_passed(call: str) -> None:
    sent, send_sync = recording_send_sync(router())
    calls = {
        "positional": lambda: send_sync("executed", {}, None),
        "keyword": lambda: send_sync("executed", {}, sid=None),
        "omitted": lambda: send_sync("executed", {}),
    }
    on_thread(WORKER, calls[call])
    assert sent == [("executed", {}, TAB_A)]


@pytest.mark.parametrize(
    ("thread", "sid", "expected"),
    [(WORKER, None, TAB_A), ("Thread-2", None, None), (WORKER, "x", "x")],
    ids=["executor", "publish-loop-thread", "sid-given"],
)
def test_async_send_is_routed_by_the_same_rule(
    thread: str, sid: str | None, expected: str | None
) -> None:
    sent: list[Any] = []

    async def send(event: Any, data: Any, sid: str | None = None) -> None:
        sent.append((event, data, sid))

    routed = routing_send(send, router())
    on_thread(thread, lambda: asyncio.run(routed("executed", {"n": 1}, sid)))
    assert sent == [("executed", {"n": 1}, expected)]


def test_first_routing_of_each_event_name_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    _, send_sync = recording_send_sync(router())
    with caplog.at_level(logging.INFO, logger="comfy_clientid_bridge.routing.broadcasts"):
        for event in ["executed", "executed", "impact-add-queue", "executed"]:
            on_thread(WORKER, lambda event=event: send_sync(event, {}))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "'executed'" in lines[0] and "'impact-add-queue'" in lines[1]


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ("", SERVER_EVENTS),
        ("impact-add-queue", SERVER_EVENTS | {"impact-add-queue"}),
        (" a , b,,", SERVER_EVENTS | {"a", "b"}),
    ],
    ids=["unset", "one", "spaces-and-empties"],
)
def test_the_keep_list_comes_from_one_environment_variable(
    listed: str, expected: frozenset[str]
) -> None:
    assert keep_broadcast_from({ENV_KEEP_BROADCAST: listed}) == expected


# --- queue puts -------------------------------------------------------------------------


def put_router(running: Running | None) -> QueuePutRouter:
    return QueuePutRouter(
        running=lambda: running,
        is_connected=lambda client_id: client_id == TAB_A,
        on_worker_thread=internals.on_worker_thread,
        extra_data_of=lambda item: (fields := internals.item_fields(item)) and fields[2],
        with_extra_data=internals.with_extra_data,
    )


GRAPH = {"1": {"class_type": "X", "inputs": {}}}
OTHER_WORKFLOW = {"workflow": {"nodes": [{"id": 5}]}}
SENSITIVE = {"api_key_comfy_org": "sk-secret"}

PUT_CASES = [
    # (thread, running prompt, item's extra_data, expected extra_data, action)
    (
        WORKER,
        Running(TAB_A, WORKFLOW),
        {},
        {"client_id": TAB_A, "extra_pnginfo": WORKFLOW},
        "rewrite",
    ),
    (
        WORKER,
        Running(TAB_A, WORKFLOW),
        {"extra_pnginfo": OTHER_WORKFLOW},
        {"client_id": TAB_A, "extra_pnginfo": OTHER_WORKFLOW},
        "rewrite",
    ),
    (WORKER, Running(TAB_A, None), {}, {"client_id": TAB_A}, "rewrite"),
    (
        WORKER,
        Running(TAB_A, WORKFLOW),
        {"client_id": "stale"},
        {"client_id": TAB_A, "extra_pnginfo": WORKFLOW},
        "rewrite",
    ),
    (WORKER, Running(GONE, WORKFLOW), {"client_id": TAB_A}, {"client_id": TAB_A}, "keep"),
    (WORKER, Running(None, WORKFLOW), {}, {}, "untouched"),
    (WORKER, None, {}, {}, "untouched"),
    ("Thread-4", Running(TAB_A, WORKFLOW), {}, {}, None),
]
PUT_IDS = [
    "no-client-gets-running-tab-and-workflow",
    "own-workflow-kept",
    "running-prompt-without-workflow",
    "stale-client-replaced",
    "connected-client-kept",
    "running-prompt-has-no-client",
    "nothing-running",
    "other-thread-never-touched",
]


@pytest.mark.parametrize("layout", ["v0.3.64-five-fields", "0.8.0-six-fields"])
@pytest.mark.parametrize(
    ("thread", "running", "extra", "expected", "action"), PUT_CASES, ids=PUT_IDS
)
def test_queue_puts_from_node_code_follow_the_prompt_rules(
    layout: str,
    thread: str,
    running: Running | None,
    extra: dict[str, Any],
    expected: dict[str, Any],
    action: str | None,
) -> None:
    routed_by = put_router(running)
    put_items: list[Any] = []
    put = routing_put(put_items.append, routed_by)
    extra = {**extra, "secret_key": "kept as the pack made it"}
    as_made = dict(extra)
    item: tuple[Any, ...] = (7, "pid", GRAPH, extra, ["9"])
    if layout == "0.8.0-six-fields":
        item += (SENSITIVE,)
    on_thread(thread, lambda: put(item))
    [put_item] = put_items
    assert put_item[3] == {**expected, "secret_key": "kept as the pack made it"}
    assert put_item[:3] == item[:3] and put_item[4:] == item[4:]  # every other field as made
    assert type(put_item) is tuple
    assert extra == as_made  # the pack's own dict is not changed under it
    assert dict(routed_by.counts) == ({action: 1} if action else {})


@pytest.mark.parametrize(
    "item",
    [("too", "short"), (1, "pid", GRAPH, "not-a-dict", []), "not-an-item"],
    ids=["short", "extra-data-not-a-dict", "not-a-tuple"],
)
def test_an_item_of_unknown_shape_is_put_as_it_is(item: Any) -> None:
    put_items: list[Any] = []
    on_thread(WORKER, lambda: routing_put(put_items.append, put_router(Running(TAB_A)))(item))
    assert put_items == [item]


@pytest.mark.parametrize(
    ("running", "client_id", "expected"),
    [({1: ()}, TAB_A, TAB_A), ({}, TAB_A, None), ({1: ()}, None, None), ({1: ()}, {"a": 1}, None)],
    ids=["running", "idle-keeps-last-id", "no-client", "not-a-string"],
)
def test_running_client_is_the_id_core_routes_the_running_prompt_by(
    running: dict[int, Any], client_id: Any, expected: str | None
) -> None:
    server = SimpleNamespace(
        prompt_queue=SimpleNamespace(currently_running=running), client_id=client_id
    )
    assert internals.running_client_id(server) == expected


def test_worker_thread_answer_is_remembered_per_thread_not_per_ident() -> None:
    answers = [on_thread(name, internals.on_worker_thread) for name in (WORKER, "T-2", WORKER)]
    assert answers == [True, False, True]


@pytest.mark.parametrize(
    ("running", "item", "expected"),
    [
        ((0, "r", {}, {}, [], {}), (1, "p", {}, {}, ["9"]), (1, "p", {}, {}, ["9"], {})),
        ((0, "r", {}, {}, []), (1, "p", {}, {}, ["9"]), (1, "p", {}, {}, ["9"])),
        (
            (0, "r", {}, {}, [], {}),
            (1, "p", {}, {}, ["9"], {"k": 1}),
            (1, "p", {}, {}, ["9"], {"k": 1}),
        ),
        (None, (1, "p", {}, {}, ["9"]), (1, "p", {}, {}, ["9"])),
    ],
    ids=["five-on-0.8.0-gets-sensitive", "five-on-v0.3.64", "six-kept", "nothing-running"],
)
def test_a_short_item_is_fitted_to_the_running_layout(
    running: tuple[Any, ...] | None, item: tuple[Any, ...], expected: tuple[Any, ...]
) -> None:
    server = SimpleNamespace(
        prompt_queue=SimpleNamespace(currently_running={} if running is None else {1: running})
    )
    assert internals.fit_layout(item, server) == expected


def test_the_router_puts_the_fitted_item_and_counts_it() -> None:
    routed_by = put_router(Running(TAB_A))
    routed_by.fit_layout = lambda item: (*item, {})
    put_items: list[Any] = []
    on_thread(WORKER, lambda: routing_put(put_items.append, routed_by)((1, "p", GRAPH, {}, [])))
    assert put_items == [(1, "p", GRAPH, {"client_id": TAB_A}, [], {})]
    assert dict(routed_by.counts) == {"layout_fixed": 1, "rewrite": 1}


def test_counts_add_up_over_puts_and_unknown_shapes_count_as_untouched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The status route's `queue_puts` counts every put; each rewrite logs one INFO line."""
    routed_by = put_router(Running(TAB_A))
    routed_by.fit_layout = lambda item: (*item, {}) if len(item) == 5 else item
    put_items: list[Any] = []
    put = routing_put(put_items.append, routed_by)
    with caplog.at_level(logging.INFO, logger="comfy_clientid_bridge.routing.queue_puts"):
        for item in [(1, "p", GRAPH, {}, []), (2, "q", GRAPH, {}, []), ("short",)]:
            on_thread(WORKER, lambda item=item: put(item))
    assert routed_by.status() == {"queue_puts": {"layout_fixed": 2, "rewrite": 2, "untouched": 1}}
    assert [r.getMessage() for r in caplog.records] == [
        "clientid_bridge: a queue put from node code goes to the running prompt's tab"
    ] * 2
