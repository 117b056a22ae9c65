"""Credentials behind an auth pack: who is given an origin's credentials, and who never is."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer, make_mocked_request
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from comfy_clientid_bridge.routing.credentials import (
    Credentials,
    CredentialStore,
    credentials_middleware,
    place_outermost,
)
from comfy_clientid_bridge.routing.self_connections import SELF_CONNECTIONS

WORKER = "Thread-7 (prompt_worker)"  # ComfyUI's executor thread, where node code runs
TIMER = "Thread-9 (timer)"  # a thread node code started: its origin is not known
TOKEN = "tok-5ecret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BASIC = {"Authorization": "Basic dXNlcjpwYXNz"}
COOKIE = {"Cookie": "theme=dark; AIOHTTP_SESSION=s3ss10n"}
QUERY = "?token=" + TOKEN
BEARER_FIELDS = {"authorization": BEARER["Authorization"]}
GRAPH = {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}}


@dataclass
class Comfy:
    """ComfyUI in miniature: what ran, what is live, what each /prompt handler saw."""

    running: str | None = None
    live: set[str] = field(default_factory=set)
    seen: list[dict[str, Any]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    now: float = 0.0


COMFY = web.AppKey("comfy", Comfy)
STORE = web.AppKey("store", CredentialStore)


def accepted(request: web.Request) -> bool:
    """Plays ComfyUI-Login (Bearer, ?token=, its session cookie) and basic-auth at once."""
    cookie = request.headers.get("Cookie", "")
    return (
        request.headers.get("Authorization") in (BEARER["Authorization"], BASIC["Authorization"])
        or request.query.get("token") == TOKEN
        or "AIOHTTP_SESSION=s3ss10n" in cookie.split("; ")
    )


def auth_pack(name: str) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        request.app[COMFY].order.append(name)
        if not accepted(request):
            return web.json_response({"error": "Authentication required."}, status=401)
        return await handler(request)

    return auth


def create_app(comfy: Comfy, *, ttl: float = 60.0) -> web.Application:
    app = web.Application()
    app[COMFY] = comfy
    app[STORE] = store = CredentialStore(
        is_live=comfy.live.__contains__, ttl=ttl, clock=lambda: comfy.now
    )
    app.middlewares.append(auth_pack("appended at import"))  # as ComfyUI-Login does
    place_outermost(
        app,
        credentials_middleware(
            store=store,
            connections=SELF_CONNECTIONS,
            running_prompt_id=lambda: comfy.running,
            is_worker_thread=lambda name: name == WORKER,
        ),
    )
    app.middlewares.insert(0, auth_pack("inserted at 0 later"))  # as comfyui-basic-auth does

    async def post_prompt(request: web.Request) -> web.Response:
        body = await request.json()
        prompt_id = f"p{len(comfy.seen) + 1}"
        comfy.seen.append(
            {
                "authorization": request.headers.get("Authorization"),
                "cookie": request.headers.get("Cookie"),
                "token": request.query.get("token"),
                "body": body,
            }
        )
        comfy.live.add(prompt_id)
        return web.json_response({"prompt_id": prompt_id, "number": 0})

    async def get_queue(request: web.Request) -> web.Response:
        return web.json_response({"queue_running": []})

    for prefix in ("", "/api"):
        app.router.add_post(prefix + "/prompt", post_prompt)
        app.router.add_post(prefix + "/queue", get_queue)
    return app


Factory = Callable[[web.Application], Awaitable[TestServer]]
Answer = tuple[int, dict[str, Any]]


@pytest.fixture
async def server(aiohttp_server: Factory) -> TestServer:
    started = await aiohttp_server(create_app(Comfy()))
    SELF_CONNECTIONS.watch_port(started.port or 0)
    return started


def comfy_of(server: TestServer) -> Comfy:
    return server.app[COMFY]


def _post(url: str, headers: dict[str, str]) -> Answer:
    request = urllib.request.Request(
        url,
        data=json.dumps(GRAPH).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def from_node_code(url: str, headers: dict[str, str], thread_name: str) -> Answer:
    """A blocking urllib POST from a thread of this process, as node code makes it."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Answer] = loop.create_future()

    def run() -> None:
        result = _post(url, headers)
        loop.call_soon_threadsafe(answer.set_result, result)

    threading.Thread(target=run, name=thread_name, daemon=True).start()
    return await answer


OUTSIDE = """
import json, sys, urllib.request, urllib.error
url, headers = sys.argv[1], json.loads(sys.argv[2])
headers["Content-Type"] = "application/json"
req = urllib.request.Request(url, data=sys.argv[3].encode(), headers=headers, method="POST")
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.write(str(code) + "\\n" + body.decode())
"""


async def from_outside(url: str, headers: dict[str, str]) -> Answer:
    """A browser, an API client or a script: another process, so its socket is not ours."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OUTSIDE,
        url,
        json.dumps(headers),
        json.dumps(GRAPH),
        stdout=subprocess.PIPE,
    )
    out, _ = await process.communicate()
    code, _, rest = out.decode().partition("\n")
    return int(code), json.loads(rest)


async def origin_prompt(server: TestServer, headers: dict[str, str], query: str = "") -> str:
    """A tab's or an API client's accepted submission, then running on the executor.

    Sent from this process's main thread (quicker than a process per test): its own
    credentials are remembered just as an outside client's; `from_outside` checks the
    outside case itself."""
    async with ClientSession() as session:
        url = str(server.make_url("/prompt")) + query
        async with session.post(url, json=GRAPH, headers=headers) as response:
            status, answer = response.status, await response.json()
    assert status == 200
    comfy_of(server).running = answer["prompt_id"]
    return str(answer["prompt_id"])


# (origin's credentials, its query) -> what node code's request reached the handler with.
CARRIED = [
    (BEARER, "", {"authorization": BEARER["Authorization"], "cookie": None, "token": None}),
    (BASIC, "", {"authorization": BASIC["Authorization"], "cookie": None, "token": None}),
    (COOKIE, "", {"authorization": None, "cookie": COOKIE["Cookie"], "token": None}),
    ({}, QUERY, {"authorization": None, "cookie": None, "token": TOKEN}),
]


@pytest.mark.parametrize("path", ["/prompt", "/api/prompt"])
@pytest.mark.parametrize(
    ("origin", "query", "expected"),
    CARRIED,
    ids=["bearer-token", "http-basic", "session-cookie", "token-query"],
)
async def test_node_code_on_the_executor_gets_the_running_prompts_credentials(
    server: TestServer, origin: dict[str, str], query: str, expected: dict[str, Any], path: str
) -> None:
    await origin_prompt(server, origin, query)
    status, answer = await from_node_code(str(server.make_url(path)), {}, WORKER)
    assert status == 200, answer
    seen = comfy_of(server).seen[-1]
    assert {key: seen[key] for key in expected} == expected
    assert seen["body"] == GRAPH  # the body read from the copy is the body sent


async def test_a_chain_of_requeues_keeps_them(server: TestServer) -> None:
    comfy = comfy_of(server)
    await origin_prompt(server, BEARER)
    for _ in range(4):  # each re-queue runs next and re-queues in turn
        status, answer = await from_node_code(str(server.make_url("/prompt")), {}, WORKER)
        assert status == 200
        comfy.running = answer["prompt_id"]
    assert [seen["authorization"] for seen in comfy.seen] == [BEARER["Authorization"]] * 5


# Requests that are never given anyone's credentials, though a prompt with some is running.
@pytest.mark.parametrize(
    ("who", "running"),
    [
        ("outside script", "origin"),
        ("node code on a timer thread", "origin"),
        ("node code, nothing running", None),
        ("node code, running prompt unknown", "p-from-before-start"),
    ],
    ids=["outside-script", "timer-thread", "nothing-running", "unknown-origin"],
)
async def test_refused_without_credentials_of_their_own(
    server: TestServer, who: str, running: str | None
) -> None:
    comfy = comfy_of(server)
    origin = await origin_prompt(server, BEARER)
    comfy.running = origin if running == "origin" else running
    url = str(server.make_url("/prompt"))
    if who == "outside script":
        status, answer = await from_outside(url, {})
    else:
        status, answer = await from_node_code(url, {}, TIMER if "timer" in who else WORKER)
    assert (status, answer) == (401, {"error": "Authentication required."})
    assert len(comfy.seen) == 1  # only the origin reached ComfyUI


async def test_other_routes_are_not_given_credentials(server: TestServer) -> None:
    await origin_prompt(server, BEARER)
    status, _ = await from_node_code(str(server.make_url("/queue")), {}, WORKER)
    assert status == 401


async def test_node_codes_own_credentials_are_kept(server: TestServer) -> None:
    await origin_prompt(server, BEARER)
    status, _ = await from_node_code(str(server.make_url("/prompt")), BASIC, WORKER)
    assert status == 200
    assert comfy_of(server).seen[-1]["authorization"] == BASIC["Authorization"]


async def test_an_outside_clients_accepted_prompt_is_remembered_refused_not(
    server: TestServer,
) -> None:
    comfy, store, url = comfy_of(server), server.app[STORE], str(server.make_url("/prompt"))
    status, _ = await from_outside(url, {"Authorization": "Bearer no"})
    assert status == 401
    assert len(store) == 0
    status, answer = await from_outside(url, BEARER)
    assert status == 200
    assert comfy.seen[0]["authorization"] == BEARER["Authorization"]  # passed as it came
    assert store.of_prompt(answer["prompt_id"]) == Credentials(**BEARER_FIELDS)


async def test_gone_once_the_chain_ends(server: TestServer) -> None:
    comfy, store = comfy_of(server), server.app[STORE]
    first = await origin_prompt(server, BEARER)
    comfy.live.discard(first)  # it finished without re-queueing: its chain has ended
    await origin_prompt(server, COOKIE)  # the next addition sweeps it
    assert store.of_prompt(first) is None
    assert len(store) == 1


async def test_gone_after_the_ttl(server: TestServer) -> None:
    comfy = comfy_of(server)
    await origin_prompt(server, BEARER)
    comfy.now += 61.0
    status, _ = await from_node_code(str(server.make_url("/prompt")), {}, WORKER)
    assert status == 401


async def test_runs_outside_packs_whatever_their_import_order(server: TestServer) -> None:
    """On startup ours moved to the front: both packs saw node code's copy with credentials."""
    comfy = comfy_of(server)
    await origin_prompt(server, BEARER)
    comfy.order.clear()
    status, _ = await from_node_code(str(server.make_url("/prompt")), {}, WORKER)
    assert status == 200
    assert comfy.order == ["inserted at 0 later", "appended at import"]


def test_store_is_bounded() -> None:
    store = CredentialStore(is_live=lambda prompt_id: True, max_records=3)
    for number in range(5):
        store.remember(f"p{number}", Credentials(token=str(number)))
    assert len(store) == 3
    assert store.of_prompt("p0") is None
    assert store.of_prompt("p4") == Credentials(token="4")


@pytest.mark.parametrize(
    "kwargs", [{"ttl": 0}, {"ttl": -1.0}, {"max_records": 0}], ids=["ttl-0", "ttl-neg", "max-0"]
)
def test_store_refuses_bad_bounds(kwargs: dict[str, Any]) -> None:
    [name] = kwargs
    with pytest.raises(ValueError, match=f"^{name} must be "):
        CredentialStore(is_live=lambda prompt_id: True, **kwargs)


def test_the_smallest_bounds_are_allowed() -> None:
    store = CredentialStore(is_live=lambda prompt_id: True, ttl=0.5, max_records=1)
    store.remember("p1", Credentials(token="1"))
    assert store.of_prompt("p1") == Credentials(token="1")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_record_is_gone_at_its_deadline_not_after() -> None:
    clock = Clock()
    store = CredentialStore(is_live=lambda prompt_id: True, ttl=10.0, clock=clock)
    store.remember("p1", Credentials(token="1"))
    clock.now = 110.0  # exactly its deadline
    assert store.of_prompt("p1") is None


def test_adding_sweeps_a_record_at_its_deadline() -> None:
    clock = Clock()
    store = CredentialStore(is_live=lambda prompt_id: True, ttl=10.0, clock=clock)
    store.remember("p1", Credentials(token="1"))
    clock.now = 110.0
    store.remember("p2", Credentials(token="2"))
    assert len(store) == 1


def test_adding_asks_about_each_prompt_by_its_id() -> None:
    asked: list[str] = []

    def is_live(prompt_id: str) -> bool:
        asked.append(prompt_id)
        return prompt_id != "ended"

    store = CredentialStore(is_live=is_live)
    store.remember("ended", Credentials(token="1"))
    store.remember("p2", Credentials(token="2"))
    assert asked == ["ended"] and len(store) == 1
    store.remember("p3", Credentials(token="3"))
    assert asked == ["ended", "p2"] and len(store) == 2


def test_remembering_again_makes_a_record_the_newest() -> None:
    store = CredentialStore(is_live=lambda prompt_id: True, max_records=2)
    store.remember("p1", Credentials(token="1"))
    store.remember("p2", Credentials(token="2"))
    store.remember("p1", Credentials(token="1b"))  # a chain renewed p1
    store.remember("p3", Credentials(token="3"))  # the oldest goes: p2
    assert (store.of_prompt("p1"), store.of_prompt("p2")) == (Credentials(token="1b"), None)


def test_every_cookie_header_is_carried_as_one() -> None:
    request = make_mocked_request(
        "POST", "/prompt", headers=CIMultiDict([("Cookie", "a=1"), ("Cookie", "b=2")])
    )
    assert Credentials.of(request) == Credentials(cookie="a=1; b=2")


def test_middleware_refuses_bad_paths() -> None:
    with pytest.raises(ValueError, match="absolute paths"):
        credentials_middleware(
            store=CredentialStore(is_live=lambda prompt_id: True),
            connections=SELF_CONNECTIONS,
            running_prompt_id=lambda: None,
            is_worker_thread=lambda name: True,
            prompt_paths=["prompt"],
        )


def test_credentials_never_print() -> None:
    credentials = Credentials(authorization=BEARER["Authorization"], cookie="a=b", token=TOKEN)
    for text in (repr(credentials), str(credentials), f"{credentials}", repr([credentials])):
        assert TOKEN not in text and "a=b" not in text
    assert repr(credentials) == "Credentials(<hidden>)"
