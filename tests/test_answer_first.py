"""A POST /prompt is answered before the executor is woken for the prompt it queued."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import TestClient
from aiohttp.web_protocol import RequestHandler

from comfy_clientid_bridge.routing.answer_first import HeldWakes, Wake, answer_now
from comfy_clientid_bridge.routing.middleware import prompt_middleware
from comfy_clientid_bridge.routing.scope import SCOPE, PromptScope

Client = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
LOG = web.AppKey("log", list)
QUEUE = web.AppKey("queue", HeldWakes)


class RecordingCondition:
    """A threading.Condition as the queue's put uses it, logging what is done to it."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.lock = threading.RLock()

    def __enter__(self) -> bool:
        return self.lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self.lock.__exit__(*exc_info)

    def notify(self, n: int = 1) -> None:
        self.log.append(("notify", n))


def app_with(behaviour: str, log: list[Any], *, held: bool = True) -> web.Application:
    """Our middleware around a handler that queues like core's post_prompt (put, then
    answer), with `behaviour` after the put."""
    app = web.Application(middlewares=[prompt_middleware(parts=[], connections=None)])
    condition = RecordingCondition(log)
    app[LOG] = log
    app[QUEUE] = HeldWakes(condition)

    async def post_prompt(request: web.Request) -> web.StreamResponse:
        wakes: Any = app[QUEUE] if held else condition
        for _ in range(2 if behaviour == "two puts" else 1):
            with wakes:  # PromptQueue.put: heappush, queue_updated, notify under the mutex
                wakes.notify()
        if behaviour == "crash":
            raise RuntimeError("core crashed after the put")
        if behaviour == "suspends":
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            log.append("handler resumed")
        if behaviour == "streams":
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write_eof(b"streamed")
            return response
        return web.json_response({"prompt_id": "p1", "number": 1, "node_errors": {}})

    app.router.add_post("/prompt", post_prompt)
    return app


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """One log for the answer's bytes reaching the transport and the condition's notifies."""
    log: list[Any] = []
    for name in ("_write", "_writelines"):
        original = getattr(StreamWriter, name)

        def recording(self: StreamWriter, data: Any, original: Any = original) -> None:
            server_side = isinstance(self.protocol, RequestHandler)  # not the test client's
            if server_side and (not log or log[-1] != "answer written"):  # headers and body
                log.append("answer written")
            original(self, data)

        monkeypatch.setattr(StreamWriter, name, recording)
    return log


async def test_the_answer_is_written_before_the_executor_is_woken(
    aiohttp_client: Client, written: list[Any]
) -> None:
    client = await aiohttp_client(app_with("answers", written))
    response = await client.post("/prompt", json={"prompt": {}})
    assert response.status == 200
    assert await response.json() == {"prompt_id": "p1", "number": 1, "node_errors": {}}
    assert written == ["answer written", ("notify", 1)]


async def test_without_the_stand_in_the_executor_is_woken_first_as_in_core(
    aiohttp_client: Client, written: list[Any]
) -> None:
    client = await aiohttp_client(app_with("answers", written, held=False))
    assert (await client.post("/prompt", json={})).status == 200
    assert written == [("notify", 1), "answer written"]


async def test_two_puts_in_one_request_wake_two_waiters_once_answered(
    aiohttp_client: Client, written: list[Any]
) -> None:
    client = await aiohttp_client(app_with("two puts", written))
    assert (await client.post("/prompt", json={})).status == 200
    assert written == ["answer written", ("notify", 2)]


async def test_a_crash_after_the_put_still_wakes_the_executor(
    aiohttp_client: Client, written: list[Any]
) -> None:
    client = await aiohttp_client(app_with("crash", written))
    assert (await client.post("/prompt", json={})).status == 500
    assert written.count(("notify", 1)) == 1


async def test_a_request_that_suspends_after_the_put_wakes_it_on_the_loop_s_next_turn(
    aiohttp_client: Client, written: list[Any]
) -> None:
    client = await aiohttp_client(app_with("suspends", written))
    assert (await client.post("/prompt", json={})).status == 200
    assert written.index(("notify", 1)) < written.index("handler resumed")
    assert written.count(("notify", 1)) == 1  # the middleware's own call finds it done


async def test_an_answer_the_handler_sent_itself_is_left_as_it_is(
    aiohttp_client: Client, written: list[Any]
) -> None:
    client = await aiohttp_client(app_with("streams", written))
    response = await client.post("/prompt", json={})
    assert await response.read() == b"streamed"
    assert written.count(("notify", 1)) == 1


async def test_with_a_middleware_outside_ours_the_answer_waits_for_it(
    aiohttp_client: Client, written: list[Any]
) -> None:
    app = app_with("answers", written)

    @web.middleware
    async def replacing(request: web.Request, handler: Any) -> web.StreamResponse:
        await handler(request)
        return web.json_response({"replaced": True})

    app.middlewares.insert(0, replacing)
    client = await aiohttp_client(app)
    response = await client.post("/prompt", json={})
    assert await response.json() == {"replaced": True}
    assert written == [("notify", 1), "answer written"]  # woken as our middleware returned


async def test_the_answer_s_bytes_are_core_s(aiohttp_client: Client) -> None:
    answers = []
    for held in (True, False):
        client = await aiohttp_client(app_with("answers", [], held=held))
        response = await client.post("/prompt", json={})
        headers = {k: v for k, v in response.headers.items() if k != "Date"}
        answers.append((response.status, headers, await response.read()))
    assert answers[0] == answers[1]


class GoneClient(web.Response):
    async def prepare(self, request: web.BaseRequest) -> Any:
        raise ConnectionResetError("the client went away")


async def test_a_client_gone_leaves_the_write_to_aiohttp() -> None:
    await answer_now(object(), GoneClient(body=b"{}"))  # type: ignore[arg-type]


async def test_only_a_whole_unsent_answer_is_written_early() -> None:
    class Untouchable:
        prepared = False

    await answer_now(object(), Untouchable())  # type: ignore[arg-type]
    await answer_now(object(), None)  # type: ignore[arg-type]


def test_outside_a_request_the_notify_is_made_at_once() -> None:
    log: list[Any] = []
    HeldWakes(RecordingCondition(log)).notify(3)
    assert log == [("notify", 3)]


def test_in_a_scope_without_an_event_loop_the_notify_is_made_at_once() -> None:
    log: list[Any] = []
    scope = PromptScope()
    token = SCOPE.set(scope)
    try:
        HeldWakes(RecordingCondition(log)).notify()
    finally:
        SCOPE.reset(token)
    assert log == [("notify", 1)]
    assert scope.wake is None


def test_a_wake_notifies_what_is_pending_once() -> None:
    log: list[Any] = []
    wake = Wake(RecordingCondition(log))
    wake()
    assert log == []
    wake.pending = 2
    wake()
    wake()
    assert log == [("notify", 2)]


def test_a_real_waiter_is_woken_through_the_stand_in() -> None:
    held = HeldWakes(threading.Condition())
    woken = threading.Event()

    def executor() -> None:
        with held:
            if held.wait(10):
                woken.set()

    thread = threading.Thread(target=executor)
    with held:
        thread.start()
        assert held.wait_for(lambda: False, 0.01) is False  # the condition's own, passed on
    while thread.is_alive() and not woken.is_set():
        with held:
            held.notify_all()
        woken.wait(0.01)
    thread.join(10)
    assert woken.is_set()


def test_the_executor_s_timed_wait_still_times_out() -> None:
    held = HeldWakes(threading.Condition())
    with held:
        assert held.wait(0.01) is False  # prompt_worker's wait(timeout=...) until its gc
