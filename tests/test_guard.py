"""The request guard: refuses exactly the /prompt bodies core would queue and then die of."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from comfy_clientid_bridge.routing.guard import (
    QueueView,
    Refused,
    guard_on_prompt,
    install_request_guard,
    json_type,
    queue_tie,
    refusal,
    refusing_put,
    request_guard_middleware,
)
from comfy_clientid_bridge.routing.scope import SCOPE, PromptScope

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}
DEAD = "not a graph core validates"
QUEUED = web.AppKey("queued", list)  # our fake core's invalid graph

# (id, body, refused where core stamps extra_data (0.8.0), refused where it does not (v0.3.64))
CASES: list[tuple[str, Any, str | None, str | None]] = [
    ("browser-body", {"prompt": GRAPH, "client_id": "tab", "extra_data": {}}, None, None),
    ("no-client-id", {"prompt": GRAPH}, None, None),
    ("client-id-null", {"prompt": GRAPH, "client_id": None}, None, None),
    ("client-id-int", {"prompt": GRAPH, "client_id": 7}, None, None),
    ("client-id-bool", {"prompt": GRAPH, "client_id": True}, None, None),
    ("client-id-object", {"prompt": GRAPH, "client_id": {"a": 1}}, "client_id", "client_id"),
    ("client-id-array", {"prompt": GRAPH, "client_id": [1]}, "client_id", "client_id"),
    ("client-id-empty-array", {"prompt": GRAPH, "client_id": []}, "client_id", "client_id"),
    (
        "client-id-object-and-extra-data-object",
        {"prompt": GRAPH, "client_id": {}, "extra_data": {"extra_pnginfo": {}}},
        "client_id",
        "client_id",
    ),
    (
        "nested-client-id-object",
        {"prompt": GRAPH, "extra_data": {"client_id": {"a": 1}}},
        "extra_data.client_id",
        "extra_data.client_id",
    ),
    (
        "nested-client-id-array-under-a-string-one",
        {"prompt": GRAPH, "client_id": "tab", "extra_data": {"client_id": [1]}},
        None,  # core overwrites extra_data.client_id with the top-level one
        None,
    ),
    ("nested-client-id-string", {"prompt": GRAPH, "extra_data": {"client_id": "t"}}, None, None),
    ("extra-data-int", {"prompt": GRAPH, "extra_data": 5}, None, "extra_data"),
    ("extra-data-float", {"prompt": GRAPH, "extra_data": 1.5}, None, "extra_data"),
    ("extra-data-bool", {"prompt": GRAPH, "extra_data": False}, None, "extra_data"),
    ("extra-data-null", {"prompt": GRAPH, "extra_data": None}, None, "extra_data"),
    ("extra-data-string", {"prompt": GRAPH, "extra_data": "abc"}, None, None),
    ("extra-data-empty-array", {"prompt": GRAPH, "extra_data": []}, None, None),
    ("extra-data-array", {"prompt": GRAPH, "extra_data": [1, "x"]}, None, None),
    (
        "extra-data-string-naming-client-id",
        {"prompt": GRAPH, "extra_data": "my client_id"},
        None,
        "extra_data",
    ),
    (
        "extra-data-array-naming-a-secret",
        {"prompt": GRAPH, "extra_data": ["api_key_comfy_org"]},
        None,
        "extra_data",
    ),
    (
        "extra-data-string-naming-a-token",
        {"prompt": GRAPH, "extra_data": "auth_token_comfy_org"},
        None,
        "extra_data",
    ),
    (
        "extra-data-int-with-client-id",  # core's own 500: it writes client_id into it
        {"prompt": GRAPH, "extra_data": 5, "client_id": "tab"},
        None,
        None,
    ),
    ("no-prompt", {"client_id": {"a": 1}}, None, None),
    ("bad-number", {"prompt": GRAPH, "client_id": [1], "number": "x"}, None, None),
    ("number-object", {"prompt": GRAPH, "client_id": [1], "number": {}}, None, None),
    ("huge-number", {"prompt": GRAPH, "client_id": [1], "number": 10**400}, None, None),
    ("good-number", {"prompt": GRAPH, "client_id": [1], "number": "2"}, "client_id", "client_id"),
    ("nan-number", {"prompt": GRAPH, "client_id": [1], "number": "nan"}, "client_id", "client_id"),
    ("front-object", {"prompt": GRAPH, "front": {"a": 1}}, None, None),
    ("prompt-id-object", {"prompt": GRAPH, "prompt_id": {"a": 1}}, None, None),
    ("targets-object", {"prompt": GRAPH, "partial_execution_targets": {"1": 1}}, None, None),
    ("top-level-array", [{"prompt": GRAPH, "client_id": [1]}], None, None),
    ("top-level-string", "prompt", None, None),
    ("top-level-null", None, None, None),
]


@pytest.mark.parametrize(
    ("body", "stamped", "unstamped"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
@pytest.mark.parametrize("extra_data_stamped", [True, False], ids=["0.8.0", "0.3.64"])
def test_refusal(
    body: Any, stamped: str | None, unstamped: str | None, extra_data_stamped: bool
) -> None:
    field = stamped if extra_data_stamped else unstamped
    answer = refusal(body, extra_data_stamped=extra_data_stamped)
    if field is None:
        assert answer is None
        return
    assert answer is not None
    assert set(answer) == {"error", "node_errors"} and answer["node_errors"] == {}
    assert set(answer["error"]) == {"type", "message", "details", "extra_info"}
    assert answer["error"]["extra_info"]["field"] == field
    assert answer["error"]["details"].startswith(f"{field} must be ")


# ----------------------------------------------------------------------------- queue ties

OTHER = {"2": {"class_type": "EmptyImage", "inputs": {}}}
# A waiting v0.3.64 item: (number, prompt_id, prompt, extra_data, outputs_to_execute)
WAITING = (7, "mine", GRAPH, {"client_id": "tab"}, ["1"])
COUNTER = 7.0  # the server's next automatic number

# (id, body, refused where core stamps extra_data (0.8.0), refused where it does not)
TIES: list[tuple[str, Any, bool, bool]] = [
    ("no-prompt-id", {"prompt": OTHER, "number": 7}, False, False),
    ("same-key-other-graph", {"prompt": OTHER, "number": 7, "prompt_id": "mine"}, True, True),
    (
        "same-key-same-graph-other-client",
        {"prompt": GRAPH, "number": 7, "prompt_id": "mine", "client_id": "b"},
        True,
        True,
    ),
    (
        "identical-item",  # heapq compares equal tuples without '<' on a dict
        {"prompt": GRAPH, "number": 7, "prompt_id": "mine", "client_id": "tab"},
        True,  # create_time always differs
        False,
    ),
    ("other-number", {"prompt": OTHER, "number": 8, "prompt_id": "mine"}, False, False),
    ("other-id", {"prompt": OTHER, "number": 7, "prompt_id": "yours"}, False, False),
    ("number-as-string", {"prompt": OTHER, "number": "7", "prompt_id": "mine"}, True, True),
    ("nan-number", {"prompt": OTHER, "number": "nan", "prompt_id": "mine"}, False, False),
    ("automatic-number", {"prompt": OTHER, "prompt_id": "mine"}, True, True),
    ("front-negates", {"prompt": OTHER, "prompt_id": "mine", "front": True}, False, False),
    ("front-falsy", {"prompt": OTHER, "prompt_id": "mine", "front": 0}, True, True),
    ("id-as-number", {"prompt": OTHER, "number": 7, "prompt_id": 5}, False, False),
    ("bad-number", {"prompt": OTHER, "number": "x", "prompt_id": "mine"}, False, False),
    ("no-prompt", {"number": 7, "prompt_id": "mine"}, False, False),
    (
        "extra-data-string",  # v0.3.64 queues it; a string cannot be ordered against a dict
        {"prompt": GRAPH, "number": 7, "prompt_id": "mine", "extra_data": "x"},
        False,  # core's own 500 at create_time
        True,
    ),
    (
        "extra-data-string-and-client-id",  # core's own 500 at the client_id write
        {"prompt": OTHER, "number": 7, "prompt_id": "mine", "extra_data": "x", "client_id": "c"},
        False,
        False,
    ),
]


@pytest.mark.parametrize(
    ("body", "stamped", "unstamped"),
    [case[1:] for case in TIES],
    ids=[case[0] for case in TIES],
)
@pytest.mark.parametrize("extra_data_stamped", [True, False], ids=["0.8.0", "0.3.64"])
def test_queue_tie(body: Any, stamped: bool, unstamped: bool, extra_data_stamped: bool) -> None:
    answer = queue_tie(
        body, waiting=[WAITING], next_number=COUNTER, extra_data_stamped=extra_data_stamped
    )
    refused = stamped if extra_data_stamped else unstamped
    assert (answer is not None) == refused
    if answer is not None:
        assert answer["error"]["extra_info"]["field"] == "prompt_id"


def test_prompt_id_read_as_core_reads_it() -> None:
    waiting = [(7, "5", GRAPH, {}, ["1"])]
    body = {"prompt": OTHER, "number": 7, "prompt_id": 5}  # core: str(prompt_id)
    assert queue_tie(body, waiting=waiting, next_number=0, extra_data_stamped=False)


def test_the_handler_reads_the_queue_only_for_a_chosen_prompt_id() -> None:
    reads: list[int] = []

    def waiting() -> list[tuple[Any, ...]]:
        reads.append(1)
        return [WAITING]

    handler = guard_on_prompt(
        extra_data_stamped=False, queue=QueueView(waiting=waiting, next_number=lambda: COUNTER)
    )
    token = SCOPE.set(PromptScope())
    try:
        assert handler({"prompt": OTHER, "client_id": "tab"})["client_id"] == "tab"
        assert reads == []
        tied = handler({"prompt": OTHER, "prompt_id": "mine"})
    finally:
        SCOPE.reset(token)
    assert reads == [1] and "prompt_id" not in tied and tied["client_id"] is None


# ----------------------------------------------------------------------------- on a server


def fake_core(
    *, stamped: bool, handlers: list[Callable[[Any], Any]], guarded_put: bool = True
) -> web.Application:
    """server.py post_prompt in miniature, in its order (both releases): parse, on-prompt
    handlers (errors swallowed), number, validate, client_id written into extra_data
    (valid or not), the answer for an invalid graph, create_time (0.3.69+), queue put."""
    app = web.Application(middlewares=[request_guard_middleware()])
    queued: list[Any] = []
    app[QUEUED] = queued
    put = refusing_put(queued.append) if guarded_put else queued.append

    async def post_prompt(request: web.Request) -> web.Response:
        json_data = await request.json()
        for handler in handlers:
            try:
                json_data = handler(json_data)
            except Exception:  # noqa: S112 - as core's trigger_on_prompt: logged and skipped
                continue
        if "number" in json_data:
            float(json_data["number"])
        if "prompt" not in json_data:
            return web.json_response({"error": "no_prompt", "node_errors": {}}, status=400)
        valid = json_data["prompt"] != DEAD
        extra_data = json_data.get("extra_data", {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid:
            return web.json_response({"error": "core's own", "node_errors": {"1": 2}}, status=400)
        if stamped:
            extra_data["create_time"] = 1
        put(extra_data)
        return web.json_response({"prompt_id": "p", "number": 0, "node_errors": {}})

    app.router.add_post("/prompt", post_prompt)
    app.router.add_post("/api/prompt", post_prompt)
    app.router.add_post("/other", post_prompt)
    return app


Client = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


async def answer(client: TestClient[Any, Any], path: str, body: Any) -> tuple[int, Any]:
    response = await client.post(path, data=json.dumps(body))
    return response.status, json.loads(await response.read())


SERVER_CASES = [
    ("client-id-object-valid-graph", {"prompt": GRAPH, "client_id": {"a": 1}}, "client_id"),
    ("client-id-object-invalid-graph", {"prompt": DEAD, "client_id": {"a": 1}}, None),
    (
        "nested-client-id-valid-graph",
        {"prompt": GRAPH, "extra_data": {"client_id": [1]}},
        "extra_data.client_id",
    ),
    ("nested-client-id-invalid-graph", {"prompt": DEAD, "extra_data": {"client_id": [1]}}, None),
    ("extra-data-int-valid-graph", {"prompt": GRAPH, "extra_data": 3}, "extra_data"),
    ("extra-data-int-invalid-graph", {"prompt": DEAD, "extra_data": 3}, None),
    ("extra-data-int-and-client-id", {"prompt": GRAPH, "extra_data": 3, "client_id": "t"}, None),
    ("browser-body", {"prompt": GRAPH, "client_id": "tab", "extra_data": {"a": 1}}, None),
]


async def bare_answer(aiohttp_client: Client, path: str, body: Any) -> tuple[int, Any] | None:
    """Core alone's answer; None when core raises (aiohttp's 500 page is not JSON)."""
    client = await aiohttp_client(fake_core(stamped=False, handlers=[]))
    response = await client.post(path, data=json.dumps(body))
    text = await response.text()
    return None if response.status == 500 else (response.status, json.loads(text))


@pytest.mark.parametrize("path", ["/prompt", "/api/prompt"])
@pytest.mark.parametrize(
    ("body", "refused"),
    [case[1:] for case in SERVER_CASES],
    ids=[case[0] for case in SERVER_CASES],
)
async def test_guarded_server_answers_as_core_except_refusals(
    aiohttp_client: Client, path: str, body: Any, refused: str | None
) -> None:
    guarded = fake_core(stamped=False, handlers=[guard_on_prompt(extra_data_stamped=False)])
    client = await aiohttp_client(guarded)
    response = await client.post(path, data=json.dumps(body))
    if refused is None:
        bare = await bare_answer(aiohttp_client, path, body)
        got = None if response.status == 500 else (response.status, await response.json())
        assert got == bare
        return
    got = await response.json()
    assert response.status == 400
    assert got["error"]["type"] == "invalid_prompt"
    assert got["error"]["extra_info"]["field"] == refused
    assert guarded[QUEUED] == []  # nothing reached the queue


async def test_other_paths_are_not_guarded(aiohttp_client: Client) -> None:
    app = fake_core(stamped=False, handlers=[guard_on_prompt(extra_data_stamped=False)])
    client = await aiohttp_client(app)
    status, _ = await answer(client, "/other", {"prompt": GRAPH, "client_id": [1]})
    assert status == 200 and app[QUEUED] == [{"client_id": [1]}]


async def test_a_later_handler_cannot_get_a_refused_body_queued(aiohttp_client: Client) -> None:
    def restore(json_data: Any) -> Any:
        return {**json_data, "client_id": [1]}

    guard = guard_on_prompt(extra_data_stamped=False)
    app = fake_core(stamped=False, handlers=[guard, restore])
    client = await aiohttp_client(app)
    status, _ = await answer(client, "/prompt", {"prompt": GRAPH, "client_id": {"a": 1}})
    assert status == 400 and app[QUEUED] == []


async def test_without_the_put_wrapper_the_defused_body_runs(aiohttp_client: Client) -> None:
    guard = guard_on_prompt(extra_data_stamped=False)
    app = fake_core(stamped=False, handlers=[guard], guarded_put=False)
    client = await aiohttp_client(app)
    status, _ = await answer(client, "/prompt", {"prompt": GRAPH, "client_id": {"a": 1}})
    assert status == 200 and app[QUEUED] == [{"client_id": None}]  # harmless


def test_handler_defuses_only_inside_a_guarded_request() -> None:
    handler = guard_on_prompt(extra_data_stamped=True)
    body = {"prompt": GRAPH, "client_id": [1], "prompt_id": "x", "extra_data": {"a": 1}}
    assert handler(body) is body  # no scope: no middleware around this call
    scope = PromptScope()
    token = SCOPE.set(scope)
    try:
        defused = handler(body)
    finally:
        SCOPE.reset(token)
    assert defused == {"prompt": GRAPH, "client_id": None, "extra_data": {}}
    assert scope.refusal is not None
    with pytest.raises(Refused):
        token = SCOPE.set(scope)
        try:
            refusing_put(list().append)(("item",))
        finally:
            SCOPE.reset(token)


@pytest.mark.parametrize("paths", [(), ("prompt",), (1,)], ids=["none", "relative", "not-str"])
def test_factory_refuses_bad_paths(paths: Any) -> None:
    with pytest.raises(ValueError, match="paths"):
        request_guard_middleware(paths=paths)


@pytest.mark.parametrize("switched_on", [True, False], ids=["on", "off"])
async def test_install_adds_the_handler_at_start_up(
    aiohttp_client: Client, switched_on: bool
) -> None:
    app, handlers, wrapped = web.Application(), [], []
    installed = install_request_guard(
        app,
        add_on_prompt_handler=handlers.append,
        extra_data_stamped=True,
        queue=QueueView(waiting=list, next_number=lambda: 0.0),
        wrap_put=wrapped.append,
        switched_on=switched_on,
    )
    assert installed is switched_on
    assert app.middlewares == [] and handlers == []  # the package's middleware answers for it
    assert wrapped == ([refusing_put] if switched_on else [])
    await aiohttp_client(app)  # starts the app: on_startup runs
    assert len(handlers) == switched_on


# ----------------------------------------------------------------------------- exact answers


@pytest.mark.parametrize(
    ("body", "field", "expected", "got"),
    [
        ({"prompt": GRAPH, "client_id": {"a": 1}}, "client_id", "a string", "an object"),
        (
            {"prompt": GRAPH, "extra_data": {"client_id": [1]}},
            "extra_data.client_id",
            "a string",
            "an array",
        ),
        ({"prompt": GRAPH, "extra_data": 5}, "extra_data", "an object", "a number"),
        ({"prompt": GRAPH, "extra_data": None}, "extra_data", "an object", "null"),
        ({"prompt": GRAPH, "extra_data": True}, "extra_data", "an object", "a boolean"),
        ({"prompt": GRAPH, "extra_data": ["client_id"]}, "extra_data", "an object", "an array"),
        ({"prompt": GRAPH, "extra_data": "client_id"}, "extra_data", "an object", "a string"),
    ],
    ids=["client-id", "extra-client-id", "number", "null", "boolean", "array", "string"],
)
def test_the_answer_names_the_field_the_type_expected_and_the_type_sent(
    body: Any, field: str, expected: str, got: str
) -> None:
    answer = refusal(body, extra_data_stamped=False)
    assert answer == {
        "error": {
            "type": "invalid_prompt",
            "message": f"Invalid {field}: expected {expected}",
            "details": f"{field} must be {expected}, got {got}",
            "extra_info": {"field": field, "expected": expected, "got": got},
        },
        "node_errors": {},
    }
    assert str(Refused(answer)) == answer["error"]["details"]


def test_a_type_json_has_no_name_for_is_named_by_python() -> None:
    assert json_type(object()) == "object" and json_type(3.5) == "a number"


def test_a_tie_answer_names_the_prompt_id() -> None:
    body = {"prompt": OTHER, "number": 7, "prompt_id": "mine"}
    answer = queue_tie(body, waiting=[WAITING], next_number=COUNTER, extra_data_stamped=True)
    assert answer is not None
    expected = "an id that no waiting prompt with the same number has"
    assert answer["error"]["details"] == f"prompt_id must be {expected}, got a string"
    assert answer["error"]["extra_info"] == {
        "field": "prompt_id",
        "expected": expected,
        "got": "a string",
    }


def test_a_tie_is_found_behind_other_waiting_prompts() -> None:
    others = [(1, "a", GRAPH, {}, ["1"]), (7, "b", GRAPH, {}, ["1"])]
    body = {"prompt": OTHER, "number": 7, "prompt_id": "mine"}
    assert queue_tie(body, waiting=[*others, WAITING], next_number=0, extra_data_stamped=True)


def run_in_scope(handler: Callable[[Any], Any], body: Any) -> PromptScope:
    scope = PromptScope()
    token = SCOPE.set(scope)
    try:
        handler(body)
    finally:
        SCOPE.reset(token)
    return scope


def test_the_handler_judges_by_its_own_release() -> None:
    """v0.3.64 queues a string extra_data as it is (refused if it names a looked-up key);
    0.8.0 answers it with its own 500 first (not ours to refuse)."""
    body = {"prompt": GRAPH, "extra_data": "client_id"}
    unstamped = guard_on_prompt(extra_data_stamped=False)
    stamped = guard_on_prompt(extra_data_stamped=True)
    assert run_in_scope(unstamped, body).refusal is not None
    assert run_in_scope(stamped, body).refusal is None


def test_a_refused_body_with_a_prompt_id_stays_refused() -> None:
    queue = QueueView(waiting=list, next_number=lambda: COUNTER)  # nothing waits: no tie
    handler = guard_on_prompt(extra_data_stamped=True, queue=queue)
    body = {"prompt": GRAPH, "client_id": {"a": 1}, "prompt_id": "fresh"}
    answer = run_in_scope(handler, body).refusal
    assert answer is not None and answer["error"]["extra_info"]["field"] == "client_id"


@pytest.mark.parametrize("stamped", [True, False], ids=["0.8.0", "0.3.64"])
async def test_the_installed_handler_judges_ties_for_its_release(
    aiohttp_client: Client, stamped: bool
) -> None:
    """The handler added at start-up is the guard's, with this release's stamping and queue."""
    app, handlers = web.Application(), []
    queue = QueueView(waiting=lambda: [WAITING], next_number=lambda: COUNTER)
    install_request_guard(
        app,
        add_on_prompt_handler=handlers.append,
        extra_data_stamped=stamped,
        queue=queue,
        wrap_put=lambda wrap: None,
        switched_on=True,
    )
    await aiohttp_client(app)
    [handler] = handlers
    tie = {"prompt": OTHER, "number": 7, "prompt_id": "mine"}
    assert run_in_scope(handler, tie).refusal is not None
    assert (
        run_in_scope(handler, {"prompt": GRAPH, "extra_data": "client_id"}).refusal is None
    ) == (stamped)


def test_switching_the_guard_off_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="comfy_clientid_bridge.routing.guard"):
        installed = install_request_guard(
            web.Application(),
            add_on_prompt_handler=lambda handler: None,
            extra_data_stamped=True,
            queue=QueueView(waiting=list, next_number=lambda: 0.0),
            wrap_put=lambda wrap: None,
            switched_on=False,
        )
    assert installed is False
    assert [r.getMessage() for r in caplog.records] == [
        "clientid_bridge: request guard off (COMFY_CLIENTID_BRIDGE_GUARD)"
    ]


async def test_the_scope_is_closed_when_the_request_is_answered() -> None:
    seen: list[PromptScope | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(SCOPE.get())
        return web.json_response({})

    middleware = request_guard_middleware()
    await middleware(make_mocked_request("POST", "/prompt"), handler)
    assert isinstance(seen[0], PromptScope) and SCOPE.get() is None


def test_on_releases_that_stamp_extra_data_an_equal_twin_is_refused_too() -> None:
    """0.8.0 stamps create_time into every extra_data: two items with one key always
    differ there, so even a twin of the waiting prompt would stall the queue."""
    twin = {"prompt": GRAPH, "number": 7, "prompt_id": "mine", "client_id": "tab"}
    queue = QueueView(waiting=lambda: [WAITING], next_number=lambda: COUNTER)
    stamped = guard_on_prompt(extra_data_stamped=True, queue=queue)
    unstamped = guard_on_prompt(extra_data_stamped=False, queue=queue)
    assert run_in_scope(stamped, twin).refusal is not None
    assert run_in_scope(unstamped, twin).refusal is None
