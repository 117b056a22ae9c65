"""The flowing runner against fake ComfyUIs (tests/fake_flow_comfy.py), and its pure parts."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer, unused_port
from fake_flow_comfy import FakeFlowComfy

from comfy_clientid_bridge.__main__ import parser
from comfy_clientid_bridge.batch.uploads import uploads_folder
from comfy_clientid_bridge.tools.cli import BatchError, batch, prepare, server_urls
from comfy_clientid_bridge.tools.flow import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    FlowError,
    Settings,
    batch_key,
    folder_verdict,
    local_path,
    one_image_graph,
    output_images,
    run_flow,
)
from comfy_clientid_bridge.tools.flow_view import FlowView
from comfy_clientid_bridge.tools.ledger import Ledger
from comfy_clientid_bridge.tools.server_credentials import CredentialsError, headers_for

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "batch_folder.api.json"


def example() -> dict[str, Any]:
    return dict(json.loads(EXAMPLE.read_text()))


# --- pure parts ----------------------------------------------------------------------------


def test_one_image_graph_pins_the_loader_and_drops_batch_next(tmp_path: Path) -> None:
    graph, loader = prepare(example(), tmp_path)
    one = one_image_graph(graph, loader, "/there", "sub/a.png")
    assert one[loader]["inputs"]["file"] == "sub/a.png"
    assert one[loader]["inputs"]["folder"] == "/there"
    assert one[loader]["inputs"]["cursor"] == -1
    assert "4" not in one  # Batch Next: the runner queues every image itself
    assert "file" not in graph[loader]["inputs"]  # the template is left as it was


@pytest.mark.parametrize(
    ("change", "same"),
    [
        (lambda g: g["1"]["inputs"].update(file="x.png"), True),
        (lambda g: g["1"]["inputs"].update(cursor=5), True),
        (lambda g: g.pop("4"), True),
        (lambda g: g["2"]["inputs"].update(suffix="_other"), False),
        (lambda g: g["1"]["inputs"].update(pattern="*.jpg"), False),
    ],
    ids=["file", "cursor", "without-batch-next", "saver-setting", "pattern"],
)
def test_the_batch_key_follows_the_work_not_the_runners_inputs(
    tmp_path: Path, change: Callable[[dict[str, Any]], Any], same: bool
) -> None:
    graph = example()
    changed = example()
    change(changed)
    assert (batch_key(graph, "1", tmp_path) == batch_key(changed, "1", tmp_path)) is same


def test_the_batch_key_follows_the_folder(tmp_path: Path) -> None:
    assert batch_key(example(), "1", tmp_path / "a") != batch_key(example(), "1", tmp_path / "b")


def test_output_images_are_the_saved_ones_only() -> None:
    outputs = {
        "2": {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"}]},
        "9": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
        "1": {"text": ["1/3"]},
    }
    assert output_images(outputs) == [{"filename": "a.png", "subfolder": "s"}]


@pytest.mark.parametrize(
    ("source", "filename", "expected"),
    [
        ("a.png", "a_out.png", "a_out.png"),
        ("x/y/a.png", "a_out.png", "x/y/a_out.png"),
    ],
    ids=["top", "subfolders-mirrored"],
)
def test_downloads_mirror_the_sources_subfolders(
    tmp_path: Path, source: str, filename: str, expected: str
) -> None:
    assert local_path(tmp_path, source, {"filename": filename}) == tmp_path / expected


@pytest.mark.parametrize("filename", ["../evil.png", "/etc/evil.png"], ids=["dotdot", "absolute"])
def test_a_download_name_cannot_leave_the_folder(tmp_path: Path, filename: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        local_path(tmp_path, "a.png", {"filename": filename})


def test_a_server_address_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(BatchError) as raised:
        server_urls(["http://me:hunter2@host:8188"])
    assert "hunter2" not in str(raised.value) and "--credentials" in str(raised.value)


@pytest.mark.parametrize(
    ("entry", "header"),
    [
        ({"token": "t0k"}, "Bearer t0k"),
        ({"token": "env:MY_TOKEN"}, "Bearer from-env"),
        ({"user": "me", "password": "pw"}, "Basic bWU6cHc="),
    ],
    ids=["bearer", "bearer-from-env", "basic"],
)
def test_credentials_become_the_servers_authorization_header(
    tmp_path: Path, entry: dict[str, str], header: str
) -> None:
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"http://a:1/": entry, "http://other:2": {"token": "x"}}))
    found = headers_for(path, ["http://a:1"], environ={"MY_TOKEN": "from-env"})
    assert found == {"http://a:1": {"Authorization": header}}


def test_the_credentials_file_may_be_named_by_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"http://a:1": {"token": "t"}}))
    environ = {"COMFY_CLIENTID_BRIDGE_CREDENTIALS": str(path)}
    assert headers_for(None, ["http://a:1"], environ=environ) == {
        "http://a:1": {"Authorization": "Bearer t"}
    }
    assert headers_for(None, ["http://a:1"], environ={}) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "cannot read the credentials file"),
        ('{"http://a:1": {"token": "env:UNSET_VAR"}}', "names $UNSET_VAR, which is unset"),
        ('{"http://a:1": {"pass": "secret-value"}}', "needs 'token' or 'user'/'password'"),
        ('{"http://a:1": "secret-value"}', "is not an object"),
    ],
    ids=["not-json", "unset-env", "unknown-kind", "not-an-object"],
)
def test_bad_credentials_are_named_without_the_secret(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "creds.json"
    path.write_text(text)
    with pytest.raises(CredentialsError, match=re.escape(message)) as raised:
        headers_for(path, ["http://a:1"], environ={})
    assert "secret-value" not in str(raised.value)


@pytest.mark.parametrize("key", ["../../etc", "ABCDEF0123456789", "abc"], ids=str)
def test_the_uploads_route_removes_only_a_batch_folder(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="not a batch key"):
        uploads_folder(tmp_path, key)
    assert uploads_folder(tmp_path, "0123456789abcdef") == (
        tmp_path / "clientid_bridge_uploads" / "0123456789abcdef"
    )


def test_the_command_line_takes_the_new_options() -> None:
    args = parser().parse_args(
        ["batch", "--workflow", "w", "--folder", "f", "--upload", "--download", "d"]
    )
    assert (args.upload, args.download, args.static, args.lost_after) == (
        True,
        Path("d"),
        False,
        10.0,
    )


# --- the runner against fake servers ---------------------------------------------------------


def pngs(folder: Path, count: int, sub: str = "") -> list[str]:
    (folder / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for number in range(count):
        name = f"{sub}/img{number:02}.png".lstrip("/")
        (folder / name).write_bytes(b"\x89PNG fake " + name.encode())
        names.append(name)
    return names


class Fakes:
    def __init__(self, fakes: list[FakeFlowComfy], servers: list[TestServer]) -> None:
        self.fakes, self.servers = fakes, servers

    @property
    def urls(self) -> list[str]:
        return [str(server.make_url("")).rstrip("/") for server in self.servers]


@pytest.fixture
async def two() -> AsyncIterator[Fakes]:
    fakes = [FakeFlowComfy(hold=0.01), FakeFlowComfy(hold=0.03)]
    servers = [TestServer(fake.app()) for fake in fakes]
    for server in servers:
        await server.start_server()
    yield Fakes(fakes, servers)
    for server in servers:
        await server.close()


async def flow(
    urls: list[str],
    folder: Path,
    tmp_path: Path,
    *,
    headers: dict[str, dict[str, str]] | None = None,
    out: io.StringIO | None = None,
    **settings: Any,
) -> int:
    graph, loader = prepare(example(), folder)
    base = {"ledger": tmp_path / "l.sqlite", "report": tmp_path / "r.jsonl", "lost_after": 0.3}
    view = FlowView(out=out or io.StringIO(), data=io.StringIO())
    return await run_flow(
        urls, graph, loader, folder, Settings(**{**base, **settings}), view, headers or {}, {}
    )


def report(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]


async def test_every_image_is_done_once_over_two_servers(two: Fakes, tmp_path: Path) -> None:
    names = pngs(tmp_path / "in", 12)
    assert await flow(two.urls, tmp_path / "in", tmp_path) == EXIT_OK
    ran = two.fakes[0].sources + two.fakes[1].sources
    assert Counter(ran) == Counter(names)
    assert len(two.fakes[0].sources) > len(two.fakes[1].sources) >= 1  # the faster does more
    lines = report(tmp_path)
    assert [line["source"] for line in lines] == names
    for line in lines:
        server = two.urls.index(line["server"])
        assert line["source"] in two.fakes[server].sources and line["status"] == "done"


async def test_a_fresh_run_checks_each_server_once_before_its_first_prompt(
    two: Fakes, tmp_path: Path
) -> None:
    """The start of a short run counts: the nodes and the folder are asked about once (the
    first connection takes the preflight's answers), and no queue when nothing is leased."""
    pngs(tmp_path / "in", 4)
    assert await flow(two.urls, tmp_path / "in", tmp_path) == EXIT_OK
    classes = {node["class_type"] for node in example().values()}  # Batch Next too: as sent
    for fake in two.fakes:
        first_prompt = fake.requests.index("POST /prompt")
        before = sorted(fake.requests[:first_prompt])
        assert before == sorted(
            [
                *(f"GET /object_info/{name}" for name in classes),
                "GET /api/clientid_bridge/folder",
                "GET /ws",
            ]
        )
        assert "GET /queue" not in fake.requests


async def test_the_same_command_again_does_nothing_when_all_is_done(
    two: Fakes, tmp_path: Path
) -> None:
    pngs(tmp_path / "in", 4)
    await flow(two.urls, tmp_path / "in", tmp_path)
    before = [len(fake.queued) for fake in two.fakes]
    assert await flow(two.urls, tmp_path / "in", tmp_path) == EXIT_OK
    assert [len(fake.queued) for fake in two.fakes] == before


async def test_a_server_gone_mid_run_has_its_images_moved(two: Fakes, tmp_path: Path) -> None:
    names = pngs(tmp_path / "in", 12)
    out = io.StringIO()
    urls = two.urls

    async def kill_slow_after_one() -> None:
        # It holds two prompts from the start (depth 2): one runs, one waits.
        while not two.fakes[1].sources:
            await asyncio.sleep(0.001)
        await two.fakes[1].go_away()

    killer = asyncio.ensure_future(kill_slow_after_one())
    assert await flow(urls, tmp_path / "in", tmp_path, out=out) == EXIT_OK
    await killer
    done = [line["source"] for line in report(tmp_path) if line["status"] == "done"]
    assert sorted(done) == names
    moved = [line for line in report(tmp_path) if line["moved"]]
    assert moved and all(line["server"] == urls[0] for line in moved)
    assert "moved: " in out.getvalue() and "(lost)" in out.getvalue()


async def test_a_failed_image_ends_non_zero_and_is_tried_again_next_time(
    two: Fakes, tmp_path: Path
) -> None:
    pngs(tmp_path / "in", 4)
    for fake in two.fakes:
        fake.fail.add("img02.png")
    assert await flow(two.urls, tmp_path / "in", tmp_path) == EXIT_INCOMPLETE
    assert {line["source"]: line["status"] for line in report(tmp_path)}["img02.png"] == "failed"
    for fake in two.fakes:
        fake.fail.clear()
    assert await flow(two.urls, tmp_path / "in", tmp_path) == EXIT_OK
    assert (two.fakes[0].sources + two.fakes[1].sources).count("img02.png") == 2


async def test_a_restarted_runner_asks_what_became_of_the_prompts_it_had(
    two: Fakes, tmp_path: Path
) -> None:
    """A killed runner's leases: finished meanwhile (history), still queued (adopted and
    heard over the same client id), unknown to the server (queued again)."""
    names = pngs(tmp_path / "in", 5)
    graph, _ = prepare(example(), tmp_path / "in")
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.sync(names)
    url, fake = two.urls[0], two.fakes[0]
    ledger.put(f"client_id {url}", "c" * 32)
    ledger.lease(1, url, 1, "p-finished")
    ledger.lease(2, url, 2, "p-queued")
    ledger.lease(3, url, 3, "p-unknown")
    ledger.close()
    fake.history["p-finished"] = {
        "outputs": {"2": {"images": [{"filename": "x", "subfolder": "", "type": "output"}]}},
        "status": {"status_str": "success", "completed": True},
    }
    queued_graph = one_image_graph(graph, "1", str(tmp_path / "in"), "img01.png")
    fake.paused.set()  # the queued prompt runs only once the runner listens again
    fake.queued.append(("p-queued", queued_graph, "c" * 32))
    fake._work.put_nowait(("p-queued", queued_graph, "c" * 32))
    asyncio.get_running_loop().call_later(0.3, fake.paused.clear)

    assert await flow(two.urls, tmp_path / "in", tmp_path) == EXIT_OK
    ran = two.fakes[0].sources + two.fakes[1].sources
    assert Counter(ran) == Counter(names) - Counter(["img00.png"])  # img00: from history
    lines = {line["source"]: line for line in report(tmp_path)}
    assert lines["img00.png"]["outputs"] == ["x"]
    assert lines["img00.png"]["note"] == "saved (found in the server's history)"
    assert lines["img02.png"]["note"] == "saved"  # heard over the websocket
    assert all(line["status"] == "done" for line in lines.values())


async def test_uploads_and_downloads_mirror_the_folder(two: Fakes, tmp_path: Path) -> None:
    names = pngs(tmp_path / "in", 3, sub="deep/er")
    local = tmp_path / "local"
    status = await flow(two.urls, tmp_path / "in", tmp_path, upload=True, download=local)
    assert status == EXIT_OK
    uploaded = {**two.fakes[0].uploads, **two.fakes[1].uploads}
    key = batch_key(example(), "1", tmp_path / "in")
    assert {
        name.removeprefix(f"clientid_bridge_uploads/{key}/"): data
        for name, data in uploaded.items()
    } == {name: (tmp_path / "in" / name).read_bytes() for name in names}
    got = sorted(path.relative_to(local).as_posix() for path in local.rglob("*.png"))
    assert got == [name.replace(".png", "_out.png") for name in names]
    assert (local / "deep/er/img00_out.png").read_bytes() == b"png of out/deep/er/img00_out.png"
    used = [fake for fake in two.fakes if fake.uploads]
    assert all(fake.deleted == [key] for fake in used)


@pytest.mark.parametrize(
    ("status", "answer", "expected"),
    [
        (200, {"readable": True, "why": ""}, (True, "")),
        (
            200,
            {"readable": False, "why": "not allowed on this server"},
            (False, "not allowed on this server"),
        ),
        (200, {"readable": "yes"}, (False, "not readable there")),
        (200, None, (False, "its folder check answered 200")),
        (404, None, (False, "it cannot say (an older comfy-clientid-bridge)")),
        (500, {"readable": True}, (False, "its folder check answered 500")),
    ],
    ids=["reads", "not-allowed", "not-a-true", "not-json", "no-route", "server-error"],
)
def test_only_a_server_that_says_it_reads_the_folder_goes_without_uploads(
    status: int, answer: Any, expected: tuple[bool, str]
) -> None:
    assert folder_verdict(status, answer) == expected


@pytest.mark.parametrize(
    ("reads", "force", "uploaded"),
    [
        ((True, True), False, ()),
        ((True, False), False, (1,)),
        ((True, None), False, (1,)),
        ((False, False), False, (0, 1)),
        ((True, True), True, (0, 1)),
    ],
    ids=["both-read", "one-cannot", "one-without-the-route", "neither", "forced"],
)
async def test_images_are_uploaded_to_exactly_the_servers_that_cannot_read_the_folder(
    two: Fakes,
    tmp_path: Path,
    reads: tuple[bool | None, bool | None],
    force: bool,
    uploaded: tuple[int, ...],
) -> None:
    names = pngs(tmp_path / "in", 8)
    for fake, answer in zip(two.fakes, reads, strict=True):
        fake.reads_folder = answer
    out = io.StringIO()
    assert await flow(two.urls, tmp_path / "in", tmp_path, upload=force, out=out) == EXIT_OK
    key = batch_key(example(), "1", tmp_path / "in")
    for number, fake in enumerate(two.fakes):
        folders = {graph["1"]["inputs"]["folder"] for _, graph, _ in fake.queued}
        there = f"clientid_bridge_uploads/{key}" if number in uploaded else str(tmp_path / "in")
        assert folders == {there}, number
        assert bool(fake.uploads) is (number in uploaded)
        assert fake.asked == ([] if force else [{"path": str(tmp_path / "in"), "file": names[0]}])
    hosts = [url.split("://", 1)[1] for url in two.urls]
    text = out.getvalue()
    if uploaded:
        assert f"images uploaded to: {', '.join(hosts[n] for n in uploaded)}" in text
    else:
        assert "images uploaded to" not in text and "does not read" not in text
    for number in uploaded if not force else ():
        assert f"{hosts[number]}: does not read {tmp_path / 'in'}" in text


async def test_a_server_answering_only_later_is_asked_when_it_does(tmp_path: Path) -> None:
    pngs(tmp_path / "in", 10)
    first, late = FakeFlowComfy(hold=0.1), FakeFlowComfy(hold=0.01, reads_folder=False)
    port = unused_port()
    servers = [TestServer(first.app()), TestServer(late.app(), port=port)]
    await servers[0].start_server()
    asyncio.get_running_loop().call_later(0.2, asyncio.ensure_future, servers[1].start_server())
    urls = [str(servers[0].make_url("")).rstrip("/"), f"http://127.0.0.1:{port}"]
    out = io.StringIO()
    try:
        assert await flow(urls, tmp_path / "in", tmp_path, out=out) == EXIT_OK
    finally:
        for server in servers:
            await server.close()
    key = batch_key(example(), "1", tmp_path / "in")
    assert len(late.asked) == 1 and late.queued  # asked once, when it answered; it took work
    assert {graph["1"]["inputs"]["folder"] for _, graph, _ in late.queued} == {
        f"clientid_bridge_uploads/{key}"
    }
    assert {graph["1"]["inputs"]["folder"] for _, graph, _ in first.queued} == {
        str(tmp_path / "in")
    }
    assert f"images uploaded to: {urls[1].split('://', 1)[1]}" in out.getvalue()


async def test_credentials_go_to_their_server_and_nowhere_else(two: Fakes, tmp_path: Path) -> None:
    pngs(tmp_path / "in", 3)
    two.fakes[0].token = "sekrit-token"
    out = io.StringIO()
    headers = {two.urls[0]: {"Authorization": "Bearer sekrit-token"}}
    assert await flow(two.urls, tmp_path / "in", tmp_path, headers=headers, out=out) == EXIT_OK
    assert set(two.fakes[1].authorizations) == {""}
    assert set(two.fakes[0].authorizations) == {"Bearer sekrit-token"}
    for path in tmp_path.iterdir():
        if path.is_file():
            assert b"sekrit" not in path.read_bytes(), path
    assert "sekrit" not in out.getvalue()


async def test_a_server_refusing_the_credentials_stops_the_run_before_anything_is_queued(
    two: Fakes, tmp_path: Path
) -> None:
    pngs(tmp_path / "in", 3)
    two.fakes[0].token = "needed"
    with pytest.raises(FlowError, match="refused our credentials"):
        await flow(two.urls, tmp_path / "in", tmp_path)
    assert two.fakes[1].queued == []


def test_static_shards_refuse_upload_and_download(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(upload=True)
    status = batch(["http://127.0.0.1:9"], tmp_path, tmp_path, static=True, settings=settings)
    assert status == 2
    assert "--upload and --download need the runner without --static" in capsys.readouterr().err


async def test_ctrl_c_deletes_the_waiting_prompts_and_keeps_the_running_one_leased(
    two: Fakes, tmp_path: Path
) -> None:
    names = pngs(tmp_path / "in", 8)
    for fake in two.fakes:
        fake.hold = 0.5

    async def interrupt_when_both_run() -> None:
        while not all(fake.running for fake in two.fakes):
            await asyncio.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    interrupter = asyncio.ensure_future(interrupt_when_both_run())
    assert await flow(two.urls, tmp_path / "in", tmp_path) == EXIT_INTERRUPTED
    await interrupter
    statuses = Counter(line["status"] for line in report(tmp_path))
    assert statuses == {"leased": 2, "pending": 6}  # one running on each server
    assert all(len(fake.dropped) == 1 for fake in two.fakes)  # each one's waiting prompt
    for fake in two.fakes:
        fake.hold = 0.0
    assert await flow(two.urls, tmp_path / "in", tmp_path) == EXIT_OK
    ran = two.fakes[0].sources + two.fakes[1].sources
    assert Counter(ran) == Counter(names)  # the two that ran on are not run again


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("out", "per_image_lines"), [(io.StringIO, 2), (Terminal, 0)], ids=["pipe", "terminal"]
)
def test_a_terminal_gets_a_bar_and_a_pipe_a_line_per_image(
    out: type[io.StringIO], per_image_lines: int
) -> None:
    stream = out()
    view = FlowView(out=stream)
    view.started(3, 0, ["a:1"], "ledger")
    view.finished("x.png", "a:1", "accepted", "saved")
    view.finished("y.png", "a:1", "accepted", "saved")
    view.finished("z.png", "a:1", "failed", "boom")
    view.summary(1, {"pending": 0, "leased": 0, "done": 2, "failed": 1}, [], [], "r")
    text = stream.getvalue()
    assert text.count("<- a:1: saved") == per_image_lines
    assert "z.png <- a:1: boom" in text  # a failure is a line of its own either way
    assert text.rstrip().endswith("result: 2/3 images, 1 failed (exit 1)")
    assert ("img/s" in text) is (out is Terminal)
