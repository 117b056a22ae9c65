"""The terminal runner's pure parts: preparing shards, reading the websocket, what is shown."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import re
import select
import struct
import termios
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from comfy_clientid_bridge.__main__ import parser, program_name
from comfy_clientid_bridge.tools.batch_view import (
    BarsView,
    JsonView,
    PlainView,
    make_view,
    meter,
    plain_line,
    summary_lines,
    totals,
)
from comfy_clientid_bridge.tools.cli import (
    LOADER,
    NEXT,
    BatchError,
    Shard,
    Watch,
    check_servers,
    class_types,
    exit_status,
    missing_nodes_error,
    prepare,
    run_batch,
    server_urls,
)

SAVER = "ClientIdBridge_BatchImageSaver"  # events of other nodes change nothing

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "batch_folder.api.json"


def example() -> dict[str, Any]:
    return dict(json.loads(EXAMPLE.read_text()))


def test_prepare_points_the_loader_at_the_folder(tmp_path: Path) -> None:
    graph, loader = prepare(example(), tmp_path)
    assert loader == "1"
    assert graph["1"]["inputs"]["folder"] == str(tmp_path.resolve())
    assert graph["1"]["inputs"]["cursor"] == -1
    assert (graph["1"]["inputs"]["shard_index"], graph["1"]["inputs"]["shard_count"]) == (0, 1)


def test_prepare_gives_each_server_its_shard(tmp_path: Path) -> None:
    graphs = [prepare(example(), tmp_path, (index, 3))[0]["1"]["inputs"] for index in range(3)]
    assert [(g["shard_index"], g["shard_count"]) for g in graphs] == [(0, 3), (1, 3), (2, 3)]


def test_one_server_keeps_the_workflows_own_shard(tmp_path: Path) -> None:
    workflow = example()
    workflow["1"]["inputs"].update(shard_index=1, shard_count=4)
    inputs = prepare(workflow, tmp_path)[0]["1"]["inputs"]
    assert (inputs["shard_index"], inputs["shard_count"]) == (1, 4)


def test_several_servers_refuse_a_workflow_sharded_already(tmp_path: Path) -> None:
    workflow = example()
    workflow["1"]["inputs"].update(shard_index=1, shard_count=4)
    with pytest.raises(BatchError, match="sharded already"):
        prepare(workflow, tmp_path, (0, 2))


@pytest.mark.parametrize(
    ("workflow", "message"),
    [
        ({"nodes": [], "links": []}, "UI workflow"),
        ({"1": {"class_type": "SaveImage", "inputs": {}}}, "exactly one"),
        (
            {"1": {"class_type": LOADER, "inputs": {}}, "2": {"class_type": LOADER, "inputs": {}}},
            "has 2",
        ),
    ],
    ids=["ui-format", "no-loader", "two-loaders"],
)
def test_prepare_refuses_what_it_cannot_run(workflow: dict[str, Any], message: str) -> None:
    with pytest.raises(BatchError, match=message):
        prepare(workflow, Path("."))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["http://127.0.0.1:8188/"], ["http://127.0.0.1:8188"]),
        (["127.0.0.1:8188", "gpu2:8188"], ["http://127.0.0.1:8188", "http://gpu2:8188"]),
        (["https://comfy.example/"], ["https://comfy.example"]),
    ],
    ids=["trailing-slash", "no-scheme", "https"],
)
def test_server_urls(given: list[str], expected: list[str]) -> None:
    assert server_urls(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["a:1", "http://a:1/"], "given twice"),
        (["ftp://a:1"], "not an http"),
        ([], "at least one"),
    ],
    ids=["duplicate", "not-http", "none"],
)
def test_server_urls_refuse(given: list[str], message: str) -> None:
    with pytest.raises(BatchError, match=message):
        server_urls(given)


def test_class_types_are_the_workflows_nodes() -> None:
    assert class_types(example()) == sorted([LOADER, SAVER, "ClientIdBridge_BatchProgress", NEXT])


@pytest.mark.parametrize(
    ("missing", "hint"),
    [([LOADER, NEXT], True), (["KSampler"], False), (["KSampler", NEXT], True)],
    ids=["ours", "another-packs", "both"],
)
def test_missing_nodes_name_the_server(missing: list[str], hint: bool) -> None:
    message = missing_nodes_error("http://gpu2:8190", missing)
    assert message.startswith("gpu2:8190: ")
    assert all(name in message for name in missing)
    assert ("is comfy-clientid-bridge installed there?" in message) is hint


def executed(node: str, **output: list[Any]) -> dict[str, Any]:
    return {"type": "executed", "data": {"node": node, "output": output}}


def loader_step(done: int, total: int, file: str = "x.png", state: str = "running") -> Any:
    return executed(
        "1",
        badge=[f"{done}/{total} · ETA 0:07"],
        batch_id=["b"],
        progress=[done, total],
        state=[state],
        file=[file],
    )


GRAPH = {"1": {"class_type": LOADER}, "2": {"class_type": SAVER}, "4": {"class_type": NEXT}}

# (events, finished, error, state)
CASES = [
    ([], None, None, "queued"),
    ([loader_step(3, 10)], None, None, "running"),
    (
        [executed("4", badge=["done: 10 saved, 0 skipped"], state=["done"])],
        "done: 10 saved, 0 skipped",
        None,
        "done",
    ),
    ([executed("4", badge=["stopped: 4/10"], state=["stopped"])], "stopped: 4/10", None, "stopped"),
    (
        [executed("1", badge=["already complete: ..."], state=["complete"])],
        "already complete: ...",
        None,
        "complete",
    ),
    (
        [{"type": "execution_error", "data": {"node_type": "X", "exception_message": "boom "}}],
        None,
        "X: boom",
        "queued",
    ),
    ([executed("9", badge=["9/9 · ETA 0:00"], state=["done"])], None, None, "queued"),
    (
        [executed("1", badge=["image 3 was already processed"], state=["duplicate"])],
        None,
        None,
        "duplicate",
    ),
    (
        [
            {"type": "execution_start", "data": {"prompt_id": "p1"}},
            {"type": "execution_interrupted", "data": {"prompt_id": "p1"}},
        ],
        "interrupted on the server",
        None,
        "stopped",
    ),
    ([{"type": "execution_interrupted", "data": {"prompt_id": "other"}}], None, None, "queued"),
]


@pytest.mark.parametrize(
    ("events", "finished", "error", "state"),
    CASES,
    ids=[
        "nothing",
        "progress",
        "done",
        "stopped",
        "halted",
        "error",
        "foreign-node",
        "duplicate",
        "cancelled-on-server",
        "someone-elses-cancel",
    ],
)
def test_watch(
    events: list[dict[str, Any]], finished: str | None, error: str | None, state: str
) -> None:
    watch = Watch(GRAPH, "1")
    for event in events:
        watch.on_event(event)
    assert (watch.finished, watch.error, watch.state) == (finished, error, state)


def test_watch_remembers_where_a_resumed_batch_began() -> None:
    watch = Watch(GRAPH, "1")
    for done in (6, 7, 8):
        watch.on_event(loader_step(done, 10))
    assert (watch.progress, watch.done_before) == ((8, 10), 6)


@pytest.mark.parametrize(
    ("state", "succeeded"),
    [("done", True), ("complete", True), ("stopped", False), ("busy", False), ("unknown", False)],
)
def test_only_a_finished_batch_succeeds(state: str, succeeded: bool) -> None:
    watch = Watch(GRAPH, "1")
    watch.on_event(executed("1", badge=["x"], state=[state]))
    assert watch.succeeded is succeeded and watch.finished == "x"


def shard(
    index: int = 0,
    count: int = 1,
    *events: dict[str, Any],
    url: str = "",
    **fields: Any,
) -> Shard:
    made = Shard(url or f"http://127.0.0.1:{8188 + index}", index, count, Watch(GRAPH, "1"))
    for event in events:
        made.watch.on_event(event)
    for name, value in fields.items():
        setattr(made, name, value)
    return made


DONE = executed("4", badge=["done: 10 saved, 0 skipped"], state=["done"], progress=[10, 10])

# (shards, exit status, outcomes)
EXITS = [
    ([shard(0, 2, DONE), shard(1, 2, DONE)], 0, ["done", "done"]),
    ([shard(0, 2, DONE), shard(1, 2, loader_step(4, 10), lost="gone")], 1, ["done", "lost"]),
    ([shard(0, 1, DONE, failed_images=1)], 1, ["done"]),
    (
        [shard(0, 2, loader_step(3, 10), interrupted=True), shard(1, 2, DONE)],
        130,
        ["stopped", "done"],
    ),
    (
        [shard(0, 1, executed("1", badge=["already complete: x"], state=["complete"]))],
        0,
        ["complete"],
    ),
    ([shard(0, 1, executed("1", badge=["already running"], state=["busy"]))], 1, ["busy"]),
    ([shard(0, 1, {"type": "execution_error", "data": {}})], 1, ["error"]),
]


@pytest.mark.parametrize(
    ("shards", "status", "outcomes"),
    EXITS,
    ids=["all-done", "one-lost", "an-image-failed", "ctrl-c", "complete-before", "busy", "error"],
)
def test_exit_status(shards: list[Shard], status: int, outcomes: list[str]) -> None:
    assert [s.outcome for s in shards] == outcomes
    assert exit_status(shards) == status


def test_totals_wait_for_every_shard_and_count_what_came_before() -> None:
    first = shard(0, 2, loader_step(6, 10), loader_step(8, 10))
    second = shard(1, 2)
    assert totals([first, second]) == (8, None, 6)
    second.watch.on_event(loader_step(1, 9))
    assert totals([first, second]) == (9, 19, 7)


def test_the_rate_counts_only_this_runs_images() -> None:
    # 8 done, 6 of them before this run, in 2 s: 1 image/s, 2 left.
    assert meter(8, 10, 6, 2.0) == "8/10 [00:02<00:02,  1.00img/s]"


def test_a_plain_line_names_server_shard_file_and_the_whole() -> None:
    first = shard(0, 2, loader_step(3, 10, "cat.png"))
    second = shard(1, 2, loader_step(5, 10))
    line = plain_line(first, [first, second], 1.0)
    assert line.startswith("127.0.0.1:8188 [1/2] 3/10 [00:01<")
    assert "running · cat.png" in line and line.endswith("· all 8/20")
    assert plain_line(shard(0, 1, loader_step(3, 10)), [], 1.0).startswith("127.0.0.1:8188 3/10")


def test_the_summary_names_the_incomplete_shard_and_each_report() -> None:
    good = shard(0, 2, DONE, report="/out/batch_a.jsonl")
    lost = shard(1, 2, loader_step(4, 10), lost="lost the connection to 127.0.0.1:8189")
    lines = summary_lines([good, lost], 1)
    assert lines[0] == "127.0.0.1:8188 [1/2]: done: 10 saved, 0 skipped"
    assert lines[1] == "  report (127.0.0.1:8188): /out/batch_a.jsonl"
    assert lines[2].startswith("127.0.0.1:8189 [2/2]: incomplete at 4/10: lost the connection")
    assert "run the same command again" in lines[2]
    assert lines[3] == "result: 14/20 images; not finished: 127.0.0.1:8189 [2/2] (exit 1)"


def test_json_prints_one_object_per_event() -> None:
    data, out = io.StringIO(), io.StringIO()
    view = JsonView(data, out)
    one = shard(0, 2, url="http://a:1")
    two = shard(1, 2, url="http://b:2")
    view.started([one, two])
    one.prompt_id = "p"
    view.queued(one)
    one.watch.on_event(loader_step(2, 5, "f.png"))
    view.progress(one)
    two.lost = "gone"
    view.ended(two)
    view.summary([one, two], 1)
    view.error("boom")
    events = [json.loads(line) for line in data.getvalue().splitlines()]
    assert [e["event"] for e in events] == [
        "start",
        "queued",
        "progress",
        "end",
        "summary",
        "error",
    ]
    assert events[0]["servers"] == ["http://a:1", "http://b:2"]
    assert (
        events[1] | {"prompt_id": "p", "server": "http://a:1", "shard": 0, "shards": 2} == events[1]
    )
    assert (events[2]["done"], events[2]["total"], events[2]["file"]) == (2, 5, "f.png")
    assert (events[3]["outcome"], events[3]["ok"]) == ("lost", False)
    assert events[4] == {
        "event": "summary",
        "exit": 1,
        "done": 2,
        "total": None,
        "incomplete": ["http://a:1", "http://b:2"],
    }
    assert out.getvalue() == "batch: boom\n"


def test_plain_lines_only_when_a_count_state_or_image_changes() -> None:
    out = io.StringIO()
    view = PlainView(out)
    one = shard(0, 1)
    view.started([one])
    steps = (
        loader_step(1, 3, "a.png"),
        loader_step(1, 3, "a.png"),
        loader_step(1, 3, "b.png"),  # the count trails: the next image, the same count
        loader_step(3, 3, "c.png"),
        DONE,
    )
    for event in steps:
        one.watch.on_event(event)
        view.progress(one)
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == [
        "127.0.0.1:8188 1/3",
        "127.0.0.1:8188 1/3",
        "127.0.0.1:8188 3/3",
        "127.0.0.1:8188 10/10",
    ]
    assert [line.rsplit(" ", 1)[1] for line in lines[:3]] == ["a.png", "b.png", "c.png"]
    assert "\r" not in out.getvalue() and "\033" not in out.getvalue()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("as_json", "stream", "kind"),
    [
        (True, Terminal(), JsonView),
        (False, Terminal(), BarsView),
        (False, io.StringIO(), PlainView),
    ],
    ids=["json", "terminal", "pipe"],
)
def test_make_view(as_json: bool, stream: io.StringIO, kind: type) -> None:
    assert type(make_view(as_json=as_json, out=stream, data=io.StringIO())) is kind


def drawn_on_a_terminal(columns: int, draw: Callable[[TextIO], None]) -> list[str]:
    """What `draw` shows on a pseudo-terminal `columns` wide: each drawn line, in order."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with os.fdopen(slave, "w") as tty:
        draw(tty)
        tty.flush()
        drawn = b""
        while select.select([master], [], [], 0.2)[0]:
            drawn += os.read(master, 65536)
    os.close(master)
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", drawn.decode())
    return [line for chunk in text.split("\n") for line in chunk.split("\r") if line.strip()]


def test_bars_fit_the_terminal_and_show_the_total_and_each_server() -> None:
    long_name = "a_rather_long_file_name_that_would_not_fit_in_72_columns.png"

    def draw(tty: TextIO) -> None:
        view = BarsView(tty)
        shards = [shard(0, 2), shard(1, 2)]
        view.started(shards)
        for index, step in ((0, loader_step(3, 10, long_name)), (1, loader_step(4, 10, "b.png"))):
            shards[index].watch.on_event(step)
            view.progress(shards[index])
        view.close()

    lines = drawn_on_a_terminal(72, draw)
    assert max(len(line) for line in lines) <= 72
    last = {line.split(": ")[0]: line for line in lines}  # each bar's last drawing
    assert set(last) == {"all", "127.0.0.1:8188 [1/2]", "127.0.0.1:8189 [2/2]"}
    assert re.search(r"35%\|.+\| 7/20 \[.+<.+img/s, 2 running\]", last["all"])
    assert re.match(
        r"127.0.0.1:8188 \[1/2\]: 3/10 \|█+ +\| .+img/s ETA ", last["127.0.0.1:8188 [1/2]"]
    )
    # The long name is cut at the terminal's edge, not wrapped onto the next line.
    assert "running · a_r" in last["127.0.0.1:8188 [1/2]"]
    assert long_name not in "".join(lines)
    assert last["127.0.0.1:8189 [2/2]"].endswith("img/s ETA ?, running · b.png")


def test_one_server_is_one_bar_with_rate_eta_and_the_file() -> None:
    def draw(tty: TextIO) -> None:
        view = BarsView(tty)
        one = shard(0, 1)
        view.started([one])
        one.watch.on_event(loader_step(3, 10, "cat.png"))
        view.progress(one)
        view.close()

    lines = drawn_on_a_terminal(100, draw)
    assert {line.split(": ")[0] for line in lines} == {"127.0.0.1:8188"}
    assert re.search(r"30%\|.+\| 3/10 \[.+<.+img/s, cat.png\]", lines[-1])


async def test_check_servers_refuses_before_anything_is_queued() -> None:
    seen: list[str] = []

    def comfy(classes: set[str]) -> web.Application:
        async def object_info(request: web.Request) -> web.Response:
            seen.append(request.path)
            name = request.match_info["name"]
            return web.json_response({name: {}} if name in classes else {})

        app = web.Application()
        app.router.add_get("/object_info/{name}", object_info)
        return app

    needed = class_types(example())
    full, bare = TestServer(comfy(set(needed))), TestServer(comfy(set()))
    await full.start_server()
    await bare.start_server()
    closed = TestServer(web.Application())
    await closed.start_server()
    closed_url = str(closed.make_url("")).rstrip("/")
    await closed.close()
    urls = [str(s.make_url("")).rstrip("/") for s in (full, bare)] + [closed_url]
    async with aiohttp.ClientSession() as session:
        await check_servers(session, urls[:1], needed)  # all there: no error
        with pytest.raises(BatchError) as refused:
            await check_servers(session, urls, needed)
    await full.close()
    await bare.close()
    message = str(refused.value)
    assert message.startswith("nothing was queued:")
    assert f"{urls[1][7:]}: the workflow's nodes are missing there" in message
    assert "is comfy-clientid-bridge installed there?" in message
    assert f"cannot reach ComfyUI at {closed_url}" in message
    assert not any("prompt" in path for path in seen)


def test_the_command_has_the_same_options_either_way() -> None:
    args = parser().parse_args(
        [
            "batch",
            "--server",
            "a:1",
            "--server",
            "b:2",
            "--workflow",
            "w",
            "--folder",
            "f",
            "--json",
        ]
    )
    assert (args.server, args.json) == (["a:1", "b:2"], True)
    assert program_name("/usr/lib/x/comfy_clientid_bridge/__main__.py") == (
        "python -m comfy_clientid_bridge"
    )
    assert program_name("/home/u/.local/bin/comfy-clientid-bridge") == "comfy-clientid-bridge"


RUNNER_NEEDS = ("aiohttp", "tqdm")


def test_the_runner_declares_floors_only_and_nothing_comfyui_must_own() -> None:
    """pip and pipx get what the runner needs; a clone in custom_nodes/ (which installs
    requirements.txt) gets none of it, and nothing ComfyUI owns is ever pinned."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    with (root / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    declared = {r.name.lower(): r for r in map(Requirement, project["dependencies"])}
    assert set(RUNNER_NEEDS) <= set(declared)
    assert all(spec.operator == ">=" for r in declared.values() for spec in r.specifier)
    assert not {"torch", "torchvision", "numpy", "pillow"} & set(declared)
    assert project["scripts"] == {"comfy-clientid-bridge": "comfy_clientid_bridge.__main__:console"}
    requirements = (root / "requirements.txt").read_text().splitlines()
    listed = [
        Requirement(line).name.lower()
        for line in requirements
        if line.strip() and not line.startswith("#")
    ]
    assert not set(RUNNER_NEEDS) & set(listed)


class FakeComfy:
    """Just enough of ComfyUI's API for the runner: nodes, a websocket, /api/prompt that
    runs a batch of `total` images as events; `dies_after` closes the websocket mid-run."""

    def __init__(self, total: int, *, dies_after: int | None = None, refuses: bool = False):
        self.total, self.dies_after, self.refuses = total, dies_after, refuses
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.prompts: list[dict[str, Any]] = []
        self.runs: list[asyncio.Future[None]] = []
        self.app = web.Application()
        self.app.router.add_get("/object_info/{name}", self.object_info)
        self.app.router.add_get("/ws", self.ws)
        self.app.router.add_post("/api/prompt", self.prompt)
        self.app.router.add_get("/api/clientid_bridge/batch/{batch}", self.status)

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response({request.match_info["name"]: {}})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.sockets[request.query["clientId"]] = socket
        async for _ in socket:
            pass
        return socket

    async def prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.refuses:
            return web.json_response({"error": {"message": "Prompt outputs failed"}}, status=400)
        self.prompts.append(body)
        self.runs.append(asyncio.ensure_future(self.run(self.sockets[body["client_id"]])))
        return web.json_response({"prompt_id": f"p{len(self.prompts)}"})

    async def run(self, socket: web.WebSocketResponse) -> None:
        for done in range(self.total):
            if done == self.dies_after:
                await socket.close()
                return
            await socket.send_json(loader_step(done, self.total, f"img{done}.png"))
            await asyncio.sleep(0.01)
        await socket.send_json(
            executed("4", badge=["done: 3 saved, 0 skipped"], state=["done"], progress=[3, 3])
        )

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"counts": {"saved": 3}, "report": "/out/batch_x.jsonl"})


async def run_on(*fakes: FakeComfy) -> tuple[int, list[dict[str, Any]], list[str]]:
    servers = [TestServer(fake.app) for fake in fakes]
    for server in servers:
        await server.start_server()
    data, out = io.StringIO(), io.StringIO()
    urls = [str(server.make_url("")).rstrip("/") for server in servers]
    try:
        status = await run_batch(urls, example(), Path("."), view=JsonView(data, out))
    finally:
        for server in servers:
            await server.close()
    return status, [json.loads(line) for line in data.getvalue().splitlines()], urls


async def test_a_server_lost_mid_run_leaves_the_others_to_finish() -> None:
    status, events, urls = await run_on(FakeComfy(3), FakeComfy(3, dies_after=1))
    ends = {event["shard"]: event for event in events if event["event"] == "end"}
    assert status == 1
    assert (ends[0]["outcome"], ends[0]["report"]) == ("done", "/out/batch_x.jsonl")
    assert ends[1]["outcome"] == "lost" and ends[1]["message"].startswith("incomplete at 0/3")
    assert events[-1]["incomplete"] == [urls[1]]


async def test_each_server_is_queued_its_own_shard_as_its_own_client() -> None:
    fakes = (FakeComfy(3), FakeComfy(3))
    status, events, _ = await run_on(*fakes)
    assert status == 0 and events[-1]["done"] == 6
    shards = [fake.prompts[0]["prompt"]["1"]["inputs"] for fake in fakes]
    assert [(s["shard_index"], s["shard_count"]) for s in shards] == [(0, 2), (1, 2)]
    assert fakes[0].prompts[0]["client_id"] != fakes[1].prompts[0]["client_id"]


async def test_a_refused_workflow_is_that_shards_error() -> None:
    status, events, _ = await run_on(FakeComfy(3), FakeComfy(3, refuses=True))
    ends = {event["shard"]: event for event in events if event["event"] == "end"}
    assert status == 1 and ends[0]["ok"] and ends[1]["outcome"] == "error"
    assert "refused the workflow" in ends[1]["message"]
