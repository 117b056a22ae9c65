"""Differential fuzzing of /prompt and /api/prompt: real ComfyUI with and without the bridge.

Every generated body is sent to both servers twice: as a browser tab sends it (Origin header
of the host, from another process) and as node code sends it (from a thread of the server
process itself, through a test-only pack's forwarding route). Status and body must be the
same with and without the bridge; the bridge must count exactly the forwarded bodies that
ComfyUI parsed as programmatic, and none of the browser's; and no traceback may come from
inside the bridge.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from comfy_clientid_bridge.tools.launcher import (
    REPO,
    Comfy,
    ComfyCell,
    Tab,
    find_comfyui,
    running_comfyui,
)

pytestmark = pytest.mark.integration

# At least 500 bodies per run; raise it for a longer hunt.
EXAMPLES = int(os.environ.get("CIB_FUZZ_EXAMPLES", "1000"))
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


NODE_CLASS_MAPPINGS = {}
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
                yield Pair(with_bridge, without_bridge)
            finally:
                tabs.close()


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


# ----------------------------------------------------------------------------- what ComfyUI parses


def parsed(body: bytes) -> tuple[bool, Any]:
    """What aiohttp's request.json() gives ComfyUI: utf-8 (strict) text, then json.loads."""
    try:
        return True, json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False, None


def well_formed(value: Any) -> bool:
    """The shapes the bridge decides on (README rule 6); anything else is ComfyUI's to answer."""
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


def template(width: Any = 8, class_type: str = "EmptyImage", output: str = "PreviewImage") -> Any:
    return {
        "1": {
            "class_type": class_type,
            "inputs": {"width": width, "height": 8, "batch_size": 1, "color": 0},
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
        {}, optional={"extra_pnginfo": st.just({"workflow": {"nodes": []}}) | json_values}
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
    if draw(st.integers(0, 9)) == 0:
        # A graph that validates, so it runs (an 8x8 preview, cached after the first). Only
        # with a string client_id and dict extra_data: with or without the bridge, core
        # ComfyUI's publish loop dies on an unhashable client_id of a running prompt
        # (server.py send_json: `sid in self.sockets`), which stops the whole server, and
        # its executor thread dies on extra_data that is not a container (execution.py
        # execute_async: `"client_id" in extra_data`), which stalls the queue for good.
        valid = {"prompt": template(), "client_id": draw(right_values["client_id"])}
        for name in ("extra_data", "number", "front", "prompt_id"):
            if draw(st.booleans()):
                valid[name] = draw(right_values[name])
        return valid
    body = {}
    for name in FIELDS:
        presence = draw(st.sampled_from(["absent", "right", "right", "wrong"]))
        if name == "prompt" and presence == "absent" and draw(st.booleans()):
            presence = "right"
        if presence != "absent":
            body[name] = draw(right_values[name] if presence == "right" else json_values)
    breaks_core = isinstance(body.get("client_id"), list | dict) or not isinstance(
        body.get("extra_data", {}), dict
    )
    if breaks_core and isinstance(body.get("prompt"), dict):
        # Never let such a body run (see above): a node no ComfyUI has fails validation.
        body["prompt"] = {**body["prompt"], "cib": {"class_type": "CibNoSuchNode", "inputs": {}}}
    return body


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
    before = bridge_counts(pair.with_bridge)

    browser = [as_browser(comfy, route, body) for comfy in (pair.with_bridge, pair.without_bridge)]
    assert normalized(browser[0], sent) == normalized(browser[1], sent)
    after_browser = bridge_counts(pair.with_bridge)
    assert after_browser["programmatic"] == before["programmatic"]  # a tab is never ours
    assert after_browser["submissions"] == before["submissions"] + ok

    node = [as_node_code(comfy, route, body) for comfy in (pair.with_bridge, pair.without_bridge)]
    assert normalized(node[0], sent) == normalized(node[1], sent)
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
        with_errors[exception_line(block)] += 1
    without_errors = Counter(exception_line(block) for block in tracebacks(without_log))
    # The same errors (ComfyUI's own 500s on bad bodies) on both servers, no more.
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
