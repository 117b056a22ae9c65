"""The routing rules, for a thread that acts for a prompt: as if made on the executor then.

Each rule is driven from a real thread whose origin is set as a tied thread's run sets it
(routing/thread_origin.py); test_thread_origin.py checks how threads get one.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from test_credentials import (
    BEARER,
    COOKIE,
    SELF_CONNECTIONS,
    Comfy,
    Factory,
    comfy_of,
    create_app,
    from_node_code,
    origin_prompt,
)

from comfy_clientid_bridge import internals
from comfy_clientid_bridge.routing import thread_origin
from comfy_clientid_bridge.routing.broadcasts import BroadcastRouter, routing_send_sync
from comfy_clientid_bridge.routing.credentials import Credentials, CredentialsPart, CredentialStore
from comfy_clientid_bridge.routing.decisions import Bridge
from comfy_clientid_bridge.routing.lineage import PromptRecord
from comfy_clientid_bridge.routing.queue_puts import QueuePutRouter, Running, routing_put
from comfy_clientid_bridge.routing.self_connections import SelfConnection, SelfConnections
from comfy_clientid_bridge.routing.thread_origin import Origin, ThreadTies, acting_for

WORKER = "Thread-7 (prompt_worker)"
TIMER = "Thread-9 (_delayed_queue)"
TAB_A, TAB_B, GONE = "a" * 32, "b" * 32, "g" * 32
WORKFLOW_A = {"workflow": {"nodes": [{"id": 1}], "extra": {"tab": "a"}}}
WORKFLOW_B = {"workflow": {"nodes": [{"id": 2}], "extra": {"tab": "b"}}}
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"color": 0}}}
OF_A = Origin("prompt-a", TAB_A, GRAPH, WORKFLOW_A)


def on_thread(name: str, origin: Origin | None, call: Callable[[], Any]) -> Any:
    """Runs `call` on a new thread with this name, acting for `origin`."""
    result: list[Any] = []

    def run() -> None:
        if origin is not None:
            thread_origin._acting.origin = origin
        result.append(call())

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    return result[0]


# --- broadcasts ---------------------------------------------------------------------------


def broadcast_router(running: str | None) -> BroadcastRouter:
    return BroadcastRouter(
        running_client=lambda: running,
        is_connected={TAB_A, TAB_B}.__contains__,
        on_worker_thread=internals.on_worker_thread,
        acting_for=acting_for,
    )


BROADCAST_CASES = [
    # (thread, its origin, running client, event, sid, expected sid)
    (TIMER, OF_A, TAB_B, "impact-add-queue", None, TAB_A),
    (TIMER, OF_A, None, "impact-add-queue", None, TAB_A),
    (TIMER, OF_A, TAB_A, "executed", None, TAB_A),
    (TIMER, Origin("p", GONE, GRAPH), TAB_B, "impact-add-queue", None, None),
    (TIMER, Origin("p", None, GRAPH), TAB_B, "impact-add-queue", None, None),
    (TIMER, OF_A, TAB_B, "status", None, None),
    (TIMER, OF_A, TAB_B, "executed", TAB_B, TAB_B),
    (TIMER, None, TAB_B, "impact-add-queue", None, None),
    (WORKER, OF_A, TAB_B, "impact-add-queue", None, TAB_B),
]
BROADCAST_IDS = [
    "origin-tab-while-another-tab-runs",
    "origin-tab-while-nothing-runs",
    "origin-tab-is-the-running-one",
    "origin-tab-closed-stays-broadcast",
    "origin-without-client-stays-broadcast",
    "server-status-kept",
    "sid-given-kept",
    "thread-of-no-prompt-stays-broadcast",
    "executor-follows-the-running-prompt",
]


@pytest.mark.parametrize(
    ("thread", "origin", "running", "event", "sid", "expected"),
    BROADCAST_CASES,
    ids=BROADCAST_IDS,
)
def test_a_broadcast_from_a_thread_goes_to_its_origin_s_tab(
    thread: str,
    origin: Origin | None,
    running: str | None,
    event: str,
    sid: str | None,
    expected: str | None,
) -> None:
    router = broadcast_router(running)
    sent: list[Any] = []
    send_sync = routing_send_sync(lambda e, d, sid=None: sent.append((e, d, sid)), router)
    on_thread(thread, origin, lambda: send_sync(event, {}, sid))
    assert sent == [(event, {}, expected)]
    from_thread = expected is not None and sid is None and thread == TIMER
    assert router.status()["routed_from_threads"] == int(from_thread)
    assert router.status()["routed_broadcasts"] == (
        {event: 1} if expected is not None and sid is None else {}
    )


# --- queue puts ---------------------------------------------------------------------------


def put_router(running: Running | None) -> QueuePutRouter:
    return QueuePutRouter(
        running=lambda: running,
        is_connected={TAB_A, TAB_B}.__contains__,
        on_worker_thread=internals.on_worker_thread,
        extra_data_of=lambda item: (fields := internals.item_fields(item)) and fields[2],
        with_extra_data=internals.with_extra_data,
        fit_layout=lambda item: (*item, {}) if len(item) == 5 else item,
        acting_for=acting_for,
    )


PUT_CASES = [
    # (thread, its origin, running prompt, item's extra_data, expected extra_data, counts)
    (
        TIMER,
        OF_A,
        Running(TAB_B, WORKFLOW_B),
        {},
        {"client_id": TAB_A, "extra_pnginfo": WORKFLOW_A},
        {"from_threads": 1, "layout_fixed": 1, "rewrite": 1},
    ),
    (
        TIMER,
        OF_A,
        None,
        {"client_id": "stale"},
        {"client_id": TAB_A, "extra_pnginfo": WORKFLOW_A},
        {"from_threads": 1, "layout_fixed": 1, "rewrite": 1},
    ),
    (
        TIMER,
        OF_A,
        Running(TAB_A),
        {"client_id": TAB_B},
        {"client_id": TAB_B},
        {"from_threads": 1, "layout_fixed": 1, "keep": 1},
    ),
    (
        TIMER,
        Origin("p", None, GRAPH),
        Running(TAB_B),
        {},
        {},
        {"from_threads": 1, "layout_fixed": 1, "untouched": 1},
    ),
    (TIMER, None, Running(TAB_B, WORKFLOW_B), {}, {}, {}),
    (
        WORKER,
        OF_A,
        Running(TAB_B, WORKFLOW_B),
        {},
        {"client_id": TAB_B, "extra_pnginfo": WORKFLOW_B},
        {"layout_fixed": 1, "rewrite": 1},
    ),
]
PUT_IDS = [
    "origin-tab-and-workflow-while-another-tab-runs",
    "stale-client-gets-origin-tab",
    "connected-client-kept",
    "origin-without-client-untouched",
    "thread-of-no-prompt-untouched",
    "executor-follows-the-running-prompt",
]


@pytest.mark.parametrize(
    ("thread", "origin", "running", "extra", "expected", "counts"), PUT_CASES, ids=PUT_IDS
)
def test_a_queue_put_from_a_thread_follows_its_origin(
    thread: str,
    origin: Origin | None,
    running: Running | None,
    extra: dict[str, Any],
    expected: dict[str, Any],
    counts: dict[str, int],
) -> None:
    router = put_router(running)
    put_items: list[Any] = []
    item = (7, "pid", GRAPH, {**extra, "secret_key": "as made"}, ["1"])
    on_thread(thread, origin, lambda: routing_put(put_items.append, router)(item))
    [put_item] = put_items
    assert put_item[3] == {**expected, "secret_key": "as made"}
    assert len(put_item) == (6 if counts else 5)  # fitted to the layout only when routed
    assert dict(router.counts) == counts


# --- the /prompt bridge ---------------------------------------------------------------------


def connection(origin: Origin | None, thread_name: str = TIMER) -> SelfConnection:
    return SelfConnection(("127.0.0.1", 50000), ("127.0.0.1", 8188), thread_name, origin)


def bridge(running_tab: str | None) -> Bridge:
    running = None
    if running_tab is not None:
        running = PromptRecord(
            client_id=running_tab, prompt_id="prompt-b", graph=GRAPH, extra_pnginfo=WORKFLOW_B
        )
    return Bridge(
        executing=lambda: running,
        is_connected={TAB_A, TAB_B}.__contains__,
        is_worker_thread=internals.is_worker_thread,
    )


BRIDGE_CASES = [
    # (connection's thread, its origin, running tab, body's client_id, action, client, origin)
    (TIMER, OF_A, TAB_B, None, "rewrite", TAB_A, "prompt-a"),
    (TIMER, OF_A, None, GONE, "rewrite", TAB_A, "prompt-a"),
    (TIMER, OF_A, TAB_B, TAB_B, "keep", TAB_B, None),
    (TIMER, Origin("p", None, GRAPH), TAB_B, None, "untouched", None, "p"),
    (WORKER, None, TAB_B, None, "rewrite", TAB_B, "prompt-b"),
]
BRIDGE_IDS = [
    "origin-while-another-tab-runs",
    "stale-client-while-nothing-runs",
    "connected-client-kept",
    "origin-without-client",
    "executor-running-prompt",
]


@pytest.mark.parametrize(
    ("thread", "origin", "running", "client_id", "action", "client", "origin_id"),
    BRIDGE_CASES,
    ids=BRIDGE_IDS,
)
def test_a_re_queue_from_a_thread_goes_to_its_origin_s_tab(
    thread: str,
    origin: Origin | None,
    running: str | None,
    client_id: str | None,
    action: str,
    client: str | None,
    origin_id: str | None,
) -> None:
    body: dict[str, Any] = {"prompt": {"1": {"class_type": "Other", "inputs": {}}}}
    if client_id is not None:
        body["client_id"] = client_id
    decision, _ = bridge(running).decide(body, connection(origin, thread))
    assert (decision.action, decision.client_id, decision.origin_prompt_id) == (
        action,
        client,
        origin_id,
    )
    assert body.get("client_id") == (client if action != "untouched" else client_id)


def test_a_thread_s_re_queue_says_so_and_carries_its_origin_s_workflow() -> None:
    body: dict[str, Any] = {"prompt": dict(GRAPH)}
    decision, record = bridge(TAB_B).decide(body, connection(OF_A))
    assert decision.reason == "no client_id; origin by thread's origin"
    assert body["extra_data"]["extra_pnginfo"] == WORKFLOW_A
    assert record is not None and record.step == frozenset()  # compared with its origin


# --- the credentials carrier ---------------------------------------------------------------

CREDENTIALS_A, CREDENTIALS_B = Credentials(authorization="A"), Credentials(authorization="B")


def carrier(running: str | None) -> CredentialsPart:
    store = CredentialStore(is_live=lambda prompt_id: True)
    store.remember("prompt-a", CREDENTIALS_A)
    store.remember("prompt-b", CREDENTIALS_B)
    return CredentialsPart(
        store=store,
        running_prompt_id=lambda: running,
        is_worker_thread=internals.is_worker_thread,
    )


@pytest.mark.parametrize(
    ("who", "running", "expected"),
    [
        (connection(OF_A), "prompt-b", CREDENTIALS_A),
        (connection(OF_A), None, CREDENTIALS_A),
        (connection(Origin("unknown", TAB_A, GRAPH)), "prompt-b", None),
        (connection(None), "prompt-b", None),
        (connection(None, WORKER), "prompt-b", CREDENTIALS_B),
        (None, "prompt-b", None),
    ],
    ids=[
        "origin-while-another-runs",
        "origin-after-it-finished",
        "origin-without-credentials",
        "thread-of-no-prompt",
        "executor",
        "not-this-process",
    ],
)
def test_a_thread_s_request_is_given_its_origin_s_credentials(
    who: SelfConnection | None, running: str | None, expected: Credentials | None
) -> None:
    assert carrier(running)._origin_credentials(who) is expected


@pytest.fixture
async def login_server(aiohttp_server: Factory) -> TestServer:
    """ComfyUI in miniature behind an auth pack, with the carrier (test_credentials.py)."""
    started = await aiohttp_server(create_app(Comfy()))
    SELF_CONNECTIONS.watch_port(started.port or 0)
    return started


@pytest.fixture
def tied() -> Iterator[ThreadTies]:
    ties = ThreadTies(on_executor=internals.on_worker_thread, executing=lambda: None)
    assert thread_origin.install(ties)
    yield ties


@pytest.mark.parametrize("origin_headers", [BEARER, COOKIE], ids=["bearer", "cookie"])
async def test_a_timer_s_re_queue_behind_a_login_gets_its_origin_s_credentials(
    login_server: TestServer, tied: ThreadTies, origin_headers: dict[str, str]
) -> None:
    """Over a real socket: the timer connects acting for its prompt, which finished; a
    prompt of another client with other credentials runs now."""
    comfy: Comfy = comfy_of(login_server)
    first = await origin_prompt(login_server, origin_headers)
    await origin_prompt(login_server, {"Authorization": "Basic dXNlcjpwYXNz"})  # another tab's
    record = Origin(first, TAB_A, GRAPH)
    url = str(login_server.make_url("/prompt"))

    def timer() -> Any:  # the timer's own thread starts the one that connects: inherited
        return on_thread(TIMER, record, lambda: asyncio.run(from_node_code(url, {}, "Thread-10")))

    status, _ = await asyncio.get_running_loop().run_in_executor(None, timer)
    assert status == 200
    seen = comfy.seen[-1]
    assert (seen["authorization"], seen["cookie"]) == (
        origin_headers.get("Authorization"),
        origin_headers.get("Cookie"),
    )


# --- self connections -----------------------------------------------------------------------


def test_a_connection_keeps_the_origin_of_the_thread_that_made_it() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    registry = SelfConnections()
    registry.watch_port(listener.getsockname()[1])
    tied_client = on_thread(TIMER, OF_A, lambda: socket.create_connection(listener.getsockname()))
    plain_client = on_thread(
        "Thread-3", None, lambda: socket.create_connection(listener.getsockname())
    )
    found = []
    for _ in range(2):
        accepted, _ = listener.accept()
        found.append(registry.lookup(accepted.getpeername(), accepted.getsockname()))
        accepted.close()
    origins = {entry.thread_name: entry.origin for entry in found if entry is not None}
    assert origins == {TIMER: OF_A, "Thread-3": None}
    for sock in (tied_client, plain_client, listener):
        sock.close()


def test_broadcasts_routed_by_a_thread_s_origin_are_counted_each() -> None:
    router = broadcast_router(TAB_B)
    send_sync = routing_send_sync(lambda e, d, sid=None: None, router)
    for event in ("impact-add-queue", "executed", "impact-add-queue"):
        on_thread(TIMER, OF_A, lambda event=event: send_sync(event, {}))
    on_thread(WORKER, None, lambda: send_sync("executed", {}))  # the executor's: not counted
    status = router.status()
    assert status["routed_from_threads"] == 3
    assert status["routed_broadcasts"] == {"impact-add-queue": 2, "executed": 2}
