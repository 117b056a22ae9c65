"""Differential fuzzing of /prompt and /api/prompt: real ComfyUI with and without the bridge.

Every generated body is sent to both servers twice: as a browser tab sends it (Origin header
of the host, from another process) and as node code sends it (from a thread of the server
process itself, through a test-only pack's forwarding route). Status and body must be the
same with and without the bridge; the bridge must count exactly the forwarded bodies that
ComfyUI parsed as programmatic, and none of the browser's; and no traceback may come from
inside the bridge.

Liveness: after every case both servers are alive and a small sentinel prompt completes.
Bodies our request guard refuses (routing/guard.py: core would queue them and then die)
are answered 400 by our server and never sent to core alone, which would die of them; core
alone gets the body with client_id and extra_data defused instead, and must accept it
(200): the original would have been queued. test_core_alone_dies_of_each_refused_shape
shows, one shape at a time, that core alone does die of them.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from comfy_clientid_bridge.routing.guard import refusal
from comfy_clientid_bridge.tools.launcher import (
    REPO,
    Comfy,
    ComfyCell,
    Tab,
    comfyui_version,
    find_comfyui,
    running_comfyui,
)

pytestmark = pytest.mark.integration

# At least 500 bodies per run; raise it for a longer hunt.
EXAMPLES = int(os.environ.get("CIB_FUZZ_EXAMPLES", "500"))
# A sentinel prompt queued after a case completes within this (it waits on history, so a
# slow machine only costs time); a dead executor thread never completes it.
SENTINEL_TIMEOUT = 60.0
ROUTES = ("/prompt", "/api/prompt")
FIELDS = (
    "prompt",
    "client_id",
    "extra_data",
    "number",
    "front",
    "prompt_id",
    "partial_execution_targets",
)
# One live tab with this id on each server: bodies naming it must be kept as they are.
LIVE_ID = "cibfuzz" + uuid.uuid4().hex
FORWARD_PATH = "/cib_test/forward"

# Written into the test's tmp dir at fixture time: node code, as far as the bridge can tell.
FORWARD_PACK = '''
"""Test-only pack: POSTs a raw body to this server's own /prompt from a server thread."""
import asyncio
import base64
import time
import urllib.error
import urllib.request

from aiohttp import web

import server

PATHS = ("/prompt", "/api/prompt")


def _post(port, path, body):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@server.PromptServer.instance.routes.post("/cib_test/forward")
async def forward(request):
    path = request.query.get("path", "/prompt")
    if path not in PATHS:
        return web.json_response({"error": "path"}, status=404)
    body = await request.read()
    port = server.PromptServer.instance.port
    loop = asyncio.get_running_loop()
    status, answer = await loop.run_in_executor(None, _post, port, path, body)
    return web.json_response({"status": status, "body": base64.b64encode(answer).decode()})


class CibSleep:
    """Keeps the executor busy, so that prompts wait in the queue together."""

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 60.0})}}

    @classmethod
    def IS_CHANGED(cls, seconds):
        return str(time.time())

    def run(self, seconds):
        time.sleep(seconds)
        return {}


NODE_CLASS_MAPPINGS = {"CibSleep": CibSleep}
'''


class LiveTabs:
    """A websocket tab with LIVE_ID on each server, held open (and drained) by a thread."""

    def __init__(self, urls: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.urls = urls
        self._run(self._open())

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    async def _open(self) -> None:
        self.session = aiohttp.ClientSession()
        self.tabs = [await Tab(self.session, url, LIVE_ID).open() for url in self.urls]
        self.listeners = [asyncio.create_task(tab.listen()) for tab in self.tabs]

    async def _close(self) -> None:
        for tab in self.tabs:
            await tab.close()
        await asyncio.gather(*self.listeners, return_exceptions=True)
        await self.session.close()

    def close(self) -> None:
        self._run(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass
class Pair:
    with_bridge: Comfy
    without_bridge: Comfy
    extra_data_stamped: bool  # core writes create_time into extra_data (0.3.69 and later)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, comfyui_cell: ComfyCell) -> Iterator[Pair]:
    # comfyui_cell: a server pair per ComfyUI of the matrix (tests/integration/conftest.py)
    found = find_comfyui()
    if isinstance(found, str):
        pytest.skip(f"integration tier: {found}")
    pack = tmp_path_factory.mktemp("packs") / "cib_fuzz_forward"
    pack.mkdir()
    (pack / "__init__.py").write_text(FORWARD_PACK)
    with_root, without_root = tmp_path_factory.mktemp("with"), tmp_path_factory.mktemp("without")
    with pytest.MonkeyPatch.context() as patch:
        # ComfyUI orders validation errors by iterating a set of node ids (execution.py
        # validate_prompt): one hash seed for both, so their answers can be compared.
        patch.setenv("PYTHONHASHSEED", "0")
        with (
            running_comfyui(with_root, packs=[REPO, pack]) as with_bridge,
            running_comfyui(without_root, packs=[pack]) as without_bridge,
        ):
            tabs = LiveTabs([with_bridge.url, without_bridge.url])
            try:
                yield Pair(with_bridge, without_bridge, stamps_extra_data(found[0]))
            finally:
                tabs.close()
                if os.environ.get("CIB_FUZZ_TALLY"):
                    record = {"comfyui": comfyui_version(found[0]), **TALLY}
                    with open(os.environ["CIB_FUZZ_TALLY"], "a") as tally:
                        tally.write(json.dumps(record) + "\n")


def stamps_extra_data(checkout: Any) -> bool:
    """internals.post_prompt_stamps_extra_data, read from outside the server."""
    version = comfyui_version(checkout) or ""
    numbers = tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    return numbers >= (0, 3, 69)


# ----------------------------------------------------------------------------- transport

Answer = tuple[int, bytes]


def http_post(url: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def http_get_json(url: str, path: str) -> Any:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def as_browser(comfy: Comfy, route: str, body: bytes) -> Answer:
    headers = {"Content-Type": "application/json", "Origin": comfy.url}
    return http_post(comfy.url, route, body, headers)


def as_node_code(comfy: Comfy, route: str, body: bytes) -> Answer:
    status, answer = http_post(
        comfy.url,
        f"{FORWARD_PATH}?path={route}",
        body,
        {"Content-Type": "application/octet-stream"},
    )
    assert status == 200, answer
    forwarded = json.loads(answer)
    return int(forwarded["status"]), base64.b64decode(forwarded["body"])


def bridge_counts(comfy: Comfy) -> Counter[str]:
    return Counter(http_get_json(comfy.url, "/clientid_bridge/status")["counts"])


def assert_alive(comfy: Comfy) -> None:
    """The process runs, and a sentinel prompt queued now completes (the executor lives)."""
    assert comfy.process.poll() is None, f"ComfyUI died:\n{comfy.log_text()[-2000:]}"
    sentinel = template(color=int(time.monotonic() * 1000) % 2**24)
    status, answer = as_browser(comfy, "/prompt", json.dumps({"prompt": sentinel}).encode())
    assert status == 200, answer
    prompt_id = json.loads(answer)["prompt_id"]
    deadline = time.monotonic() + SENTINEL_TIMEOUT
    while prompt_id not in http_get_json(comfy.url, f"/history/{prompt_id}"):
        assert comfy.process.poll() is None, f"ComfyUI died:\n{comfy.log_text()[-2000:]}"
        assert time.monotonic() < deadline, "the queue stalls: the sentinel never ran"
        time.sleep(0.02)


def is_guard_refusal(answer: Answer) -> bool:
    """Our request guard's 400: ComfyUI's error shape with the refused field named."""
    status, body = answer
    if status != 400:
        return False
    try:
        error = json.loads(body)["error"]
        return bool(error["type"] == "invalid_prompt" and "field" in error["extra_info"])
    except (ValueError, KeyError, TypeError):
        return False


def defused(sent: dict[str, Any]) -> bytes:
    """The body with what the guard refuses taken out: core alone answers it as it would
    the original up to the queue (number, graph validation), and survives it."""
    return json.dumps({**sent, "client_id": "", "extra_data": {}}).encode()


# ----------------------------------------------------------------------------- what ComfyUI parses


def parsed(body: bytes) -> tuple[bool, Any]:
    """What aiohttp's request.json() gives ComfyUI: utf-8 (strict) text, then json.loads."""
    try:
        return True, json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False, None


def well_formed(value: Any) -> bool:
    """The shapes the bridge decides on (docs/how-it-decides.md, rule 6); anything else is
    ComfyUI's to answer."""
    if not isinstance(value, dict) or not isinstance(value.get("prompt"), dict):
        return False
    client_id, extra = value.get("client_id"), value.get("extra_data", {})
    return (client_id is None or isinstance(client_id, str)) and isinstance(extra, dict)


def normalized(answer: Answer, sent: Any) -> tuple[int, str]:
    """The answer with ComfyUI's random prompt_id replaced (unless the body chose one).

    "number" is compared as it is: both servers get the same bodies in the same order, so
    their counters (server.py post_prompt, `self.number`) stay equal.
    """
    status, body = answer
    try:
        value = json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", "replace")
    chose_id = isinstance(sent, dict) and "prompt_id" in sent
    if isinstance(value, dict) and "prompt_id" in value and not chose_id:
        value["prompt_id"] = "<uuid4>"
    return status, json.dumps(value, sort_keys=True)


# ----------------------------------------------------------------------------- bodies

CLASS_TYPES = ["EmptyImage", "PreviewImage", "SaveImage", "NoSuchNode", "", "émpty", "🖼️"]
unicode_text = st.text(
    alphabet=st.characters(exclude_categories=()), max_size=12
) | st.sampled_from(
    ["", "\x00", "\u202e", "😀" * 3, "\ud800", "a\udfffb", "\ufeff", "ｃｌｉｅｎｔ"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | unicode_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(unicode_text, inner, max_size=4),
    max_leaves=10,
)


def template(
    width: Any = 8, class_type: str = "EmptyImage", output: str = "PreviewImage", color: int = 0
) -> Any:
    return {
        "1": {
            "class_type": class_type,
            "inputs": {"width": width, "height": 8, "batch_size": 1, "color": color},
        },
        "2": {"class_type": output, "inputs": {"images": ["1", 0]}},
    }


# Graphs near the real thing (so the bridge's lineage code runs), mostly failing validation.
graphs = st.one_of(
    st.builds(template, width=st.sampled_from([-5, 0, 10**9, "8", None, [1], 8.5])),
    st.builds(template, class_type=st.sampled_from(CLASS_TYPES)),
    st.builds(template, output=st.sampled_from(["SaveImage", "NoSuchOutput", "EmptyImage"])),
    st.dictionaries(
        unicode_text,
        st.fixed_dictionaries(
            {"class_type": st.sampled_from(CLASS_TYPES) | unicode_text},
            optional={"inputs": st.dictionaries(unicode_text, json_values, max_size=3)},
        )
        | json_values,
        max_size=3,
    ),
)
right_values: dict[str, st.SearchStrategy[Any]] = {
    "prompt": graphs,
    "client_id": st.sampled_from([LIVE_ID, uuid.uuid4().hex, ""]) | unicode_text,
    "extra_data": st.fixed_dictionaries(
        {},
        optional={
            "extra_pnginfo": st.just({"workflow": {"nodes": []}}) | json_values,
            "client_id": json_values,  # read when the body has no top-level client_id
        },
    ),
    "number": st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False),
    "front": st.booleans(),
    "prompt_id": st.uuids().map(str) | unicode_text,
    "partial_execution_targets": st.lists(st.sampled_from(["1", "2", "9"]), max_size=3),
}


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """A JSON document: mostly a ComfyUI body with right or wrong types per field."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # top level not an object
    if draw(st.integers(0, 4)) < 2:
        # A graph that validates, so it runs (an 8x8 preview, cached after the first), with
        # client_id and extra_data of any type: what core would queue and then die of is
        # the request guard's to refuse.
        valid = {"prompt": template()}
        for name in ("client_id", "extra_data", "number", "front", "prompt_id"):
            presence = draw(st.sampled_from(["absent", "right", "wrong"]))
            if presence != "absent":
                valid[name] = draw(right_values[name] if presence == "right" else json_values)
        return without_ties(valid)
    body = {}
    for name in FIELDS:
        presence = draw(st.sampled_from(["absent", "right", "right", "wrong"]))
        if name == "prompt" and presence == "absent" and draw(st.booleans()):
            presence = "right"
        if presence != "absent":
            body[name] = draw(right_values[name] if presence == "right" else json_values)
    return without_ties(body)


def without_ties(body: dict[str, Any]) -> dict[str, Any]:
    """Two items with one number and prompt_id can stall core's queue (routing/guard.py
    queue_tie), and each body goes out twice per server: the refused shapes cover ties."""
    if "prompt_id" in body and "number" in body and floatable(body["number"]):
        del body["prompt_id"]
    return body


def floatable(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def encode(document: Any, ascii_only: bool) -> bytes:
    return json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            ["json", "json", "json", "duplicate", "truncated", "bytes", "non_utf8", "huge", "deep"]
        )
    )
    event(f"body: {kind}")
    document = draw(documents())
    text = encode(document, draw(st.booleans()))
    if kind == "duplicate" and isinstance(document, dict) and document:
        # Raw JSON text with repeated keys: Python keeps the last one, as ComfyUI does.
        pairs = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in document.items()]
        again = draw(st.sampled_from(sorted(document)))
        pairs.insert(0, f"{json.dumps(again)}: {json.dumps(draw(json_values))}")
        pairs.append(f'"client_id": {json.dumps(draw(right_values["client_id"]))}')
        return ("{" + ", ".join(pairs) + "}").encode("utf-8", "surrogatepass")
    if kind == "truncated":
        return text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "non_utf8":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3(", b"\x80", b"\xed\xa0\x80", b"\xfe\xff"]))
        return text[:at] + junk + text[at:]
    if kind == "huge":
        size = draw(st.integers(100_000, 2_000_000))
        where = draw(st.sampled_from(["client_id", "extra_data", "prompt", "prompt_id"]))
        big: Any = "x" * size
        if where == "extra_data":
            big = {"extra_pnginfo": {"workflow": {"nodes": [{"id": i} for i in range(size // 12)]}}}
        elif where == "prompt":
            big = {str(i): {"class_type": "NoSuchNode", "inputs": {}} for i in range(size // 45)}
        return json.dumps({"prompt": template(-1), where: big}).encode()
    if kind == "deep":
        # Well clear of the recursion limit on both sides. Near it, every frame on the stack
        # moves where json.loads gives up: ComfyUI 980 levels, with our two middlewares
        # 978; hypothesis also raises this process's limit while it runs a test.
        depth = draw(st.integers(10, 500) | st.integers(20_000, 200_000))
        where = draw(st.sampled_from(["top", "prompt", "extra_data", "client_id"]))
        nested = "[" * depth + "]" * depth
        if where == "top":
            return nested.encode()
        return f'{{"prompt": {json.dumps(template(-1))}, "{where}": {nested}}}'.encode()
    return text


# ----------------------------------------------------------------------------- the test

TALLY: Counter[str] = Counter()  # written to $CIB_FUZZ_TALLY (a JSON file) when set


def both_answers(
    pair: Pair,
    send: Callable[[Comfy, str, bytes], Answer],
    route: str,
    body: bytes,
    refused: Any,
) -> tuple[Answer, Answer]:
    """Our server's answer, and core alone's: to the body itself, or, when the guard's
    oracle refuses it (`refused`: the parsed body), to its defused twin (core alone would
    die of the original). Our 400 comes back as core alone's answer when core alone
    accepted the twin: core would have queued the original."""
    ours = send(pair.with_bridge, route, body)
    if refused is None:
        return ours, send(pair.without_bridge, route, body)
    core = send(pair.without_bridge, route, defused(refused))
    if is_guard_refusal(ours):
        assert core[0] == 200, core  # refused only what core alone would have queued
        return ours, ours
    return ours, core


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(body=raw_bodies(), route=st.sampled_from(ROUTES))
def test_same_answer_with_and_without_the_bridge(pair: Pair, body: bytes, route: str) -> None:
    ok, sent = parsed(body)
    refused = ok and refusal(sent, extra_data_stamped=pair.extra_data_stamped) is not None
    before = bridge_counts(pair.with_bridge)

    browser = both_answers(pair, as_browser, route, body, sent if refused else None)
    assert normalized(browser[0], sent) == normalized(browser[1], sent)
    after_browser = bridge_counts(pair.with_bridge)
    assert after_browser["programmatic"] == before["programmatic"]  # a tab is never ours
    assert after_browser["submissions"] == before["submissions"] + ok

    node = both_answers(pair, as_node_code, route, body, sent if refused else None)
    assert normalized(node[0], sent) == normalized(node[1], sent)
    for comfy in (pair.with_bridge, pair.without_bridge):
        assert_alive(comfy)
    TALLY["bodies"] += 1
    TALLY["refused by the guard"] += is_guard_refusal(browser[0])
    TALLY["same answer"] += not is_guard_refusal(browser[0])
    event(f"guard: {'refused' if is_guard_refusal(browser[0]) else 'passed'}")
    delta = bridge_counts(pair.with_bridge) - after_browser
    # Every body ComfyUI parsed reached the bridge as programmatic, and got one decision.
    assert delta["programmatic"] == ok
    assert delta["rewrite"] + delta["keep"] + delta["untouched"] == ok
    if ok and not well_formed(sent):
        assert delta["untouched"] == 1  # malformed: left to ComfyUI as it was
    if ok and well_formed(sent) and sent.get("client_id") == LIVE_ID:
        assert delta["keep"] == 1  # names a connected tab: kept
    event(f"status: {node[0][0]}")
    decided = [action for action in ("rewrite", "keep", "untouched") if delta[action]]
    event(f"bridge: {decided[0] if decided else 'not reached'}")


# ----------------------------------------------------------------------------- the logs

FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+, in (?P<function>\S+)$', re.M)
LOGGING_ERROR = "--- Logging error ---\n"


def tracebacks(log: str) -> list[str]:
    """Each traceback to its first blank line (a logging error's call stack included)."""
    blocks = log.split("Traceback (most recent call last):\n")[1:]
    return [block.split("\n\n")[0] for block in blocks]


def exception_line(block: str) -> str:
    """The exception a traceback ends with: its first unindented line."""
    return next((line for line in block.splitlines() if line and line[0] != " "), "?")


def ran_a_node(frames: list[tuple[str, str]]) -> bool:
    """A node failing while its prompt runs (core logs "Exception during processing").
    Whether a node runs at all depends on ComfyUI's cache: a body the guard refused never
    runs on our server, while its defused twin ran on core alone's, so the next prompt of
    the same graph runs its nodes on one server and is served from the cache on the other."""
    return any(file.endswith("execution.py") for file, _ in frames)


def test_no_traceback_from_inside_the_bridge(pair: Pair) -> None:
    """The bridge raised nothing and added no error of its own (after the fuzzing, if run)."""
    for body in (b"{not json", b'{"prompt": {}, "number": "x"}', b"[" * 100_000):
        for comfy in (pair.with_bridge, pair.without_bridge):
            assert as_browser(comfy, "/prompt", body)[0] == 500  # ComfyUI's own error
            assert as_node_code(comfy, "/api/prompt", body)[0] == 500
    with_log, without_log = pair.with_bridge.log_text(), pair.without_bridge.log_text()
    assert "on_prompt_handler" not in with_log  # ComfyUI's note of a failing on-prompt hook
    ours, with_errors = 0, Counter[str]()
    for block in tracebacks(with_log):
        frames = FRAME.findall(block)
        assert frames, block
        assert "comfy_clientid_bridge" not in frames[-1][0], block  # never raised by us
        # Our frames only as middlewares passing ComfyUI's own error through.
        ours += sum("comfy_clientid_bridge" in file for file, _ in frames)
        if not ran_a_node(frames):
            with_errors[exception_line(block)] += 1
    without_errors = Counter(
        exception_line(block)
        for block in tracebacks(without_log)
        if not ran_a_node(FRAME.findall(block))
    )
    # The same request errors (ComfyUI's own 500s on bad bodies) on both servers, no more.
    assert with_errors == without_errors
    assert sum(with_errors.values()) >= 3 and ours >= 3  # the bad bodies went through us


def test_rewrite_log_line_survives_an_unencodable_client_id(pair: Pair) -> None:
    """A lone surrogate is legal JSON; the rewrite's log line escapes it (a UTF-8 log file
    cannot hold it, and the line would be lost in a '--- Logging error ---')."""
    comfy = pair.with_bridge
    graph = template()  # valid: an accepted prompt is what lineage may descend from
    graph["1"]["inputs"]["color"] = 4242  # this test's own widgets: lineage finds its tab
    tab_body = json.dumps({"prompt": graph, "client_id": "\udfffcib-tab"}).encode()
    assert as_browser(comfy, "/prompt", tab_body)[0] == 200
    rewrites, lines = bridge_counts(comfy)["rewrite"], comfy.log_text().count("rewrite -> client")
    requeue = json.dumps({"prompt": graph}).encode()  # the naive re-queue: no client_id
    assert as_node_code(comfy, "/prompt", requeue)[0] == 200
    assert bridge_counts(comfy)["rewrite"] == rewrites + 1
    log = comfy.log_text()
    assert log.count("rewrite -> client") == lines + 1
    assert LOGGING_ERROR not in log


# ----------------------------------------------------------------------------- refused shapes

BUSY = {"prompt": {"9": {"class_type": "CibSleep", "inputs": {"seconds": 3.0}}}}
TIE = {"number": 4242, "prompt_id": "cib-tie"}
# (id, the bodies, refused only where core does not stamp extra_data): the last body is
# what core alone dies of; one shape per way of dying that the guard refuses.
SHAPES: list[tuple[str, list[Any], bool]] = [
    ("client-id-object", [{"prompt": template(color=11), "client_id": {"a": 1}}], False),
    (
        "nested-client-id-array",
        [{"prompt": template(color=12), "extra_data": {"client_id": [1]}}],
        False,
    ),
    ("extra-data-number", [{"prompt": template(color=13), "extra_data": 5}], True),
    (
        # A prompt waits ahead of the two, so core accepts the second (heapq compares it
        # with that one only) and its executor meets the pair at its next get.
        "queue-tie",
        [
            BUSY,
            {"prompt": template(color=14)},
            {"prompt": template(color=15), **TIE},
            {"prompt": template(color=16), **TIE},
        ],
        False,
    ),
]
WORKER_DIED = "Exception in thread"  # threading's excepthook, for the executor thread too


def skip_unless_refused_here(stamped: bool, unstamped_only: bool) -> None:
    if unstamped_only and stamped:
        pytest.skip("core writes into extra_data first here (0.3.69+): its own 500, no harm")


def send_all(comfy: Comfy, bodies: list[Any]) -> list[Answer]:
    return [as_browser(comfy, "/prompt", json.dumps(body).encode()) for body in bodies]


@pytest.mark.parametrize(
    ("bodies", "unstamped_only"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES]
)
def test_refused_shapes_keep_our_server_alive(
    pair: Pair, bodies: list[Any], unstamped_only: bool
) -> None:
    skip_unless_refused_here(pair.extra_data_stamped, unstamped_only)
    answers = send_all(pair.with_bridge, bodies)
    assert [a[0] for a in answers[:-1]] == [200] * (len(bodies) - 1)
    assert is_guard_refusal(answers[-1]), answers[-1]
    assert_alive(pair.with_bridge)


@pytest.mark.parametrize(
    ("bodies", "unstamped_only"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES]
)
def test_core_alone_dies_of_the_refused_shapes(
    tmp_path: Any, comfyui_cell: ComfyCell, bodies: list[Any], unstamped_only: bool
) -> None:
    """Why the guard refuses them: the process ends, or the executor thread does."""
    found = find_comfyui()
    if isinstance(found, str):
        pytest.skip(f"integration tier: {found}")
    skip_unless_refused_here(stamps_extra_data(found[0]), unstamped_only)
    pack = tmp_path / "cib_fuzz_forward"
    pack.mkdir()
    (pack / "__init__.py").write_text(FORWARD_PACK)
    with running_comfyui(tmp_path / "core", packs=[pack]) as core:
        try:
            send_all(core, bodies)
        except OSError:
            pass  # gone before it answered
        deadline = time.monotonic() + 120
        while core.process.poll() is None and WORKER_DIED not in core.log_text():
            assert time.monotonic() < deadline, "core alone survived"
            time.sleep(0.1)
        if core.process.poll() is None:  # alive, but nothing runs any more
            with pytest.raises(AssertionError, match="stalls"):
                assert_alive(core)


# ----------------------------------------------------------------------------- other routes

OTHER_ROUTES = ("/queue", "/api/queue", "/interrupt", "/api/interrupt")
OUR_ROUTES = ("/clientid_bridge/batch/cib-fuzz/stop", "/api/clientid_bridge/batch/x%00/stop")
other_documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "clear": json_values,
            "delete": json_values | st.lists(json_values, max_size=3),
            "prompt_id": json_values,
        },
    ),
)


@settings(
    max_examples=max(50, EXAMPLES // 5),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    document=other_documents,
    raw=st.none() | st.binary(max_size=32),
    route=st.sampled_from(OTHER_ROUTES + OUR_ROUTES),
)
def test_other_routes_need_no_guard(
    pair: Pair, document: Any, raw: bytes | None, route: str
) -> None:
    """POST /queue (clear, delete), /interrupt and our own routes: core answers every body
    as it did, and neither server dies or stalls of one."""
    body = raw if raw is not None else encode(document, ascii_only=True)
    if route in OTHER_ROUTES:
        answers = [
            as_browser(comfy, route, body) for comfy in (pair.with_bridge, pair.without_bridge)
        ]
        assert answers[0] == answers[1]
        event(f"{route}: {answers[0][0]}")
    else:
        event(f"ours: {as_browser(pair.with_bridge, route, body)[0]}")
    for comfy in (pair.with_bridge, pair.without_bridge):
        assert_alive(comfy)
