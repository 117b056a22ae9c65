"""Registration on PromptServer: once, guarded, switchable; never raises into ComfyUI."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from comfy_clientid_bridge import internals, register
from comfy_clientid_bridge.batch import engine as engine_module
from comfy_clientid_bridge.batch.control import CONTROL
from comfy_clientid_bridge.batch.engine import BatchEngine
from comfy_clientid_bridge.batch.state import StateStore
from comfy_clientid_bridge.routing import thread_origin
from comfy_clientid_bridge.routing.answer_first import ANSWER_FIRST_SWITCH, HeldWakes
from comfy_clientid_bridge.routing.credentials import Credentials
from comfy_clientid_bridge.routing.middleware import BRIDGE, MARKER, THREAD_TIES, status
from comfy_clientid_bridge.routing.thread_origin import THREADS_SWITCH, Origin

ROUTES = [
    register.STATUS_PATH,
    register.BATCH_PATH,
    register.BATCH_PATH + "/stop",
    register.UPLOADS_PATH,
    register.FOLDER_PATH,
]


@pytest.fixture(autouse=True)
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BatchEngine:
    """The batch engine without ComfyUI's folder_paths: state and reports in tmp_path."""
    made = BatchEngine(StateStore(tmp_path / "state"), tmp_path / "out", lambda _: False)
    monkeypatch.setattr(engine_module, "_engine", made)
    return made


def fake_server() -> Any:
    handlers: list[Any] = []
    sent: list[tuple[Any, Any, Any]] = []
    put: list[Any] = []

    async def send(event: Any, data: Any, sid: Any = None) -> None:
        sent.append((event, data, sid))

    return SimpleNamespace(
        app=web.Application(),
        routes=web.RouteTableDef(),
        on_prompt_handlers=handlers,
        add_on_prompt_handler=handlers.append,
        sockets={"tab": object()},
        prompt_queue=SimpleNamespace(
            currently_running={}, put=put.append, items=put, not_empty=threading.Condition()
        ),
        send_sync=lambda event, data, sid=None: sent.append((event, data, sid)),
        send=send,
        sent=sent,
    )


def from_executor(call: Any) -> None:
    thread = threading.Thread(target=call, name="Thread-1 (prompt_worker)")
    thread.start()
    thread.join()


def ours(server: Any) -> list[Any]:
    return [m for m in server.app.middlewares if getattr(m, MARKER, False)]


def test_outside_comfyui_registers_nothing() -> None:
    assert register.register() is False


def test_installs_once_even_when_imported_twice() -> None:
    server = fake_server()
    assert register._install(server) is True
    assert register._install(server) is True
    assert len(ours(server)) == 1 and len(server.on_prompt_handlers) == 1
    assert [route.path for route in server.routes] == ROUTES
    assert BRIDGE in server.app and CONTROL in server.app


@pytest.mark.parametrize("value", ["0", "off", "False", " no "])
def test_environment_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(register.ENV_SWITCH, value)
    server = fake_server()
    assert register._install(server) is False
    assert ours(server) == [] and server.on_prompt_handlers == []
    assert [route.path for route in server.routes] == ROUTES  # the batch stop stays
    assert BRIDGE not in server.app and CONTROL in server.app


def test_the_executor_s_condition_gets_the_stand_in_once() -> None:
    server = fake_server()
    condition = server.prompt_queue.not_empty
    register._install(server)
    register._install(server)
    held = server.prompt_queue.not_empty
    assert isinstance(held, HeldWakes) and held.condition is condition


@pytest.mark.parametrize("switch", [register.ENV_SWITCH, ANSWER_FIRST_SWITCH])
def test_answer_first_has_its_own_switch(monkeypatch: pytest.MonkeyPatch, switch: str) -> None:
    monkeypatch.setenv(switch, "0")
    server = fake_server()
    register._install(server)
    held = isinstance(server.prompt_queue.not_empty, HeldWakes)
    assert held is (switch != ANSWER_FIRST_SWITCH)  # on with the bridge off, like the guard


def test_a_queue_without_the_condition_is_left_as_it_is() -> None:
    server = fake_server()
    del server.prompt_queue.not_empty
    assert internals.hold_executor_wakes(server, HeldWakes) is False
    server.prompt_queue.not_empty = object()
    assert internals.hold_executor_wakes(server, HeldWakes) is False
    assert register._install(server) is True
    assert not isinstance(server.prompt_queue.not_empty, HeldWakes)


def test_frozen_app_is_left_alone() -> None:
    server = fake_server()
    server.app.freeze()
    assert register._install(server) is False


def test_executing_prompt_reads_the_running_queue_item() -> None:
    server = fake_server()
    extra = {"client_id": "tab", "extra_pnginfo": {"workflow": {}}, "api_key_comfy_org": "k"}
    server.prompt_queue.currently_running[3] = (0, "pid", {"1": {}}, extra, [])
    record = register.executing_prompt(server)
    assert record is not None
    assert (record.client_id, record.prompt_id, record.extra_pnginfo) == (
        "tab",
        "pid",
        {"workflow": {}},
    )
    server.prompt_queue.currently_running.clear()
    assert register.executing_prompt(server) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Thread-1 (prompt_worker)", True), ("Thread-3", False), ("MainThread", False)],
)
def test_worker_thread_is_known_by_its_target(name: str, expected: bool) -> None:
    assert internals.is_worker_thread(name) is expected


def test_is_connected_reads_the_sockets_map() -> None:
    server = fake_server()
    assert internals.is_connected(server, "tab") and not internals.is_connected(server, "x")


def node_traffic(server: Any) -> tuple[Any, Any]:
    """What node code's broadcast and queue put become, with tab "tab" running a prompt."""
    server.prompt_queue.currently_running[1] = (0, "pid", {}, {"client_id": "tab"}, [])
    server.client_id = "tab"  # as PromptExecutor.execute sets it for the running prompt
    from_executor(lambda: server.send_sync("executed", {"node": "9"}))
    from_executor(lambda: asyncio.run(server.send("impact-add-queue", {})))
    from_executor(lambda: server.prompt_queue.put((1, "next", {}, {}, [])))
    return server.sent, server.prompt_queue.items[0][3].get("client_id")


def test_node_broadcasts_and_queue_puts_are_routed_once_installed() -> None:
    server = fake_server()
    assert register._install(server) is True
    sent, put_client = node_traffic(server)
    assert [sid for _, _, sid in sent] == ["tab", "tab"]
    assert put_client == "tab"


@pytest.mark.parametrize(
    "switch", [register.ENV_SWITCH, register.ENV_BROADCASTS_SWITCH], ids=["bridge", "own"]
)
def test_either_switch_leaves_node_traffic_as_core_sends_it(
    monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    monkeypatch.setenv(switch, "0")
    server = fake_server()
    register._install(server)
    sent, put_client = node_traffic(server)
    assert [sid for _, _, sid in sent] == [None, None]
    assert put_client is None
    assert (BRIDGE in server.app) is (switch == register.ENV_BROADCASTS_SWITCH)


async def test_status_route_counts_routed_broadcasts_by_event_name() -> None:
    server = fake_server()
    register._install(server)
    node_traffic(server)
    response = await status(make_mocked_request("GET", "/", app=server.app))
    body = json.loads(response.body)
    assert body["routed_broadcasts"] == {"executed": 1, "impact-add-queue": 1}
    assert body["queue_puts"] == {"rewrite": 1}
    assert body["kept_broadcast"] == ["status"]


@pytest.mark.parametrize(
    "switches",
    [{}, {register.ENV_SWITCH: "0"}, {register.GUARD_SWITCH: "0"}],
    ids=["all-on", "bridge-off", "guard-off"],
)
def test_one_middleware_of_ours_and_it_is_outermost(
    monkeypatch: pytest.MonkeyPatch, switches: dict[str, str]
) -> None:
    """Every part (credentials, guard, bridge) runs in one middleware frame, placed before
    core's and any auth pack's, whatever is switched off."""
    for name, value in switches.items():
        monkeypatch.setenv(name, value)
    server = fake_server()

    @web.middleware
    async def core(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    server.app.middlewares.append(core)
    register._install(server)
    mine = [m for m in server.app.middlewares if hasattr(m, MARKER)]
    assert len(mine) == 1 and server.app.middlewares[0] is mine[0]
    assert getattr(mine[0], MARKER) is (register.ENV_SWITCH not in switches)


# --- threads that node code starts ----------------------------------------------------------


def started_on_executor(server: Any) -> Any:
    """What a thread started by node code on the executor acts for, seen inside it."""
    seen: list[Any] = []

    def node_code() -> None:
        thread = threading.Thread(target=lambda: seen.append(thread_origin.acting_for()))
        thread.start()
        thread.join()

    from_executor(node_code)
    return seen[0]


def test_threads_started_by_node_code_act_for_the_running_prompt() -> None:
    server = fake_server()
    register._install(server)
    extra = {"client_id": "tab", "extra_pnginfo": {"workflow": {}}, "api_key_comfy_org": "k"}
    graph = {"1": {"class_type": "X", "inputs": {}}}
    server.prompt_queue.currently_running[1] = (0, "pid", graph, extra, [])
    origin = started_on_executor(server)
    assert (origin.prompt_id, origin.client_id, origin.extra_pnginfo) == (
        "pid",
        "tab",
        {"workflow": {}},
    )
    assert origin.graph is graph and "k" not in repr(origin)
    assert server.app[THREAD_TIES] is thread_origin.installed()


@pytest.mark.parametrize("switch", [None, register.ENV_SWITCH], ids=["all-on", "bridge-off"])
def test_threads_are_tied_whether_or_not_the_bridge_is_on(
    monkeypatch: pytest.MonkeyPatch, switch: str | None
) -> None:
    if switch is not None:
        monkeypatch.setenv(switch, "0")
    server = fake_server()
    register._install(server)
    server.prompt_queue.currently_running[1] = (0, "pid", {}, {"client_id": "tab"}, [])
    assert started_on_executor(server).prompt_id == "pid"


def test_the_threads_switch_leaves_threads_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(THREADS_SWITCH, "0")
    monkeypatch.setattr(thread_origin, "_ties", None)
    server = fake_server()
    with caplog.at_level(logging.INFO, logger="comfy_clientid_bridge.register"):
        register._install(server)
    server.prompt_queue.currently_running[1] = (0, "pid", {}, {"client_id": "tab"}, [])
    assert started_on_executor(server) is None
    assert THREAD_TIES not in server.app and thread_origin.installed() is None
    assert f"threads act for no prompt ({THREADS_SWITCH})" in caplog.text


@pytest.mark.parametrize("bridge", ["on", "off"])
async def test_status_route_counts_tied_threads(
    monkeypatch: pytest.MonkeyPatch, bridge: str
) -> None:
    if bridge == "off":
        monkeypatch.setenv(register.ENV_SWITCH, "0")
    server = fake_server()
    register._install(server)
    server.prompt_queue.currently_running[1] = (0, "pid", {}, {"client_id": "tab"}, [])
    started_on_executor(server)
    response = await status(make_mocked_request("GET", "/", app=server.app))
    body = json.loads(response.body)
    assert body["enabled"] is (bridge == "on")
    assert body["threads"]["tied_threads"] >= 1 and body["threads"]["acting_now"] == 0


def test_the_origin_is_made_once_per_running_prompt() -> None:
    server = fake_server()
    executing = register.ExecutingOrigin(server)
    assert executing() is None
    server.prompt_queue.currently_running[1] = (0, "p1", {}, {"client_id": 7}, [])
    first = executing()
    assert first is not None and first.client_id is None  # not a string: no client
    assert executing() is first
    server.prompt_queue.currently_running[1] = (0, "p2", {}, {"client_id": "tab"}, [])
    second = executing()
    assert second is not None and second is not first and second.prompt_id == "p2"
    server.prompt_queue.currently_running[1] = (0, "p2", {}, {"client_id": "tab"}, [])
    assert executing() is not second  # the same id queued again: another graph object


def test_credentials_stay_while_a_thread_acts_for_their_prompt() -> None:
    """A timer re-queues after its prompt finished: its credentials are not swept before."""
    server = fake_server()
    server.prompt_queue.get_current_queue_volatile = lambda: ([], [])  # nothing is live
    ties = thread_origin.ThreadTies(on_executor=lambda: False, executing=lambda: None)
    store = register._credentials_part(server, ties).store
    finished = Origin("finished", "tab", {})
    timer = thread_origin._Acting(lambda: None, finished, ties, "threads")  # not fired yet
    store.remember("finished", Credentials(authorization="A"))
    store.remember("later", Credentials(authorization="B"))  # sweeps ended prompts
    assert store.of_prompt("finished") is not None
    del timer  # it has run (or was cancelled)
    store.remember("later still", Credentials(authorization="C"))
    assert store.of_prompt("finished") is None
