"""`comfy-clientid-bridge batch` with --server given twice: one folder over two real ComfyUIs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from integration.cli_support import (
    SLOW_PACK,
    Running,
    Servers,
    get_json,
    images,
    outputs,
    own_stem,
    prompts_seen,
    report_lines,
    run,
    shard_of,
    source_of,
    use_matrix_cell,
    workflow,
)
from integration.cli_support import (
    static_command as command,
)
from integration.support import require_comfyui

from comfy_clientid_bridge.tools.launcher import REPO, Comfy, free_port

pytestmark = pytest.mark.integration

FIRST, SECOND, BARE = 0, 1, 2


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Servers]:
    use_matrix_cell(request)
    require_comfyui()
    with ExitStack() as stack:
        yield Servers(
            stack,
            [
                (tmp_path_factory.mktemp("first"), [REPO, SLOW_PACK]),
                (tmp_path_factory.mktemp("second"), [REPO, SLOW_PACK]),
                (tmp_path_factory.mktemp("bare"), [SLOW_PACK]),  # without comfy-clientid-bridge
            ],
        )


@pytest.fixture
def live(servers: Servers) -> Servers:
    """The module's servers, each running (a test that killed one may have failed)."""
    servers.revive()
    return servers


def host(comfy: Comfy) -> str:
    return comfy.url.removeprefix("http://")


def report_for(comfy: Comfy, stem: str) -> list[dict[str, Any]]:
    """The report lines of the batch over the folder named `stem` on this server."""
    found = [
        lines
        for path in comfy.output.glob("batch_*.jsonl")
        if (lines := report_lines(path)) and lines[0]["source"].startswith(stem)
    ]
    assert len(found) <= 1, f"{len(found)} reports for {stem} on {comfy.url}"
    return found[0] if found else []


def sources(lines: list[dict[str, Any]]) -> list[str]:
    return sorted(str(line["source"]) for line in lines)


def wait_idle(*comfies: Comfy, timeout: float = 60) -> None:
    """Until no prompt is queued or running: the image in flight at a stop is finished."""
    deadline = time.monotonic() + timeout
    for comfy in comfies:
        while True:
            waiting = get_json(f"{comfy.url}/api/queue")
            if not waiting["queue_running"] and not waiting["queue_pending"]:
                break
            assert time.monotonic() < deadline, f"{comfy.url} still busy"
            time.sleep(0.2)


def ends(running: Running) -> dict[int, dict[str, Any]]:
    return {event["shard"]: event for event in running.events() if event["event"] == "end"}


def test_twenty_images_over_two_servers_are_each_processed_once(
    live: Servers, tmp_path: Path
) -> None:
    stem = own_stem("split")
    names = images(tmp_path / stem, 20)
    flow = workflow(tmp_path / "flow.json", stem)
    urls = [live[FIRST].url, live[SECOND].url]
    status, running = run(command(urls, flow, tmp_path / stem, "--json"))
    assert status == 0, running.text()
    events = running.events()  # every stdout line is one JSON object
    assert events[0] == {"event": "start", "servers": urls}
    assert events[-1] == {"event": "summary", "exit": 0, "done": 20, "total": 20, "incomplete": []}
    assert {e["server"] for e in events if e["event"] == "progress"} == set(urls)
    made = {index: outputs(live[index], stem) for index in (FIRST, SECOND)}
    assert sorted(source_of(name) for name in made[FIRST] + made[SECOND]) == names
    for index, end in ends(running).items():
        assert (end["server"], end["outcome"], end["ok"]) == (urls[index], "done", True)
        # Each server's report lands in its own output folder and lists its shard.
        assert Path(end["report"]).parent == live[index].output
        assert sources(report_lines(end["report"])) == shard_of(names, index, 2)
        assert [source_of(name) for name in made[index]] == shard_of(names, index, 2)
    assert not running.stderr


def test_a_server_killed_mid_run_is_named_and_a_rerun_finishes_only_the_rest(
    live: Servers, tmp_path: Path
) -> None:
    stem = own_stem("kill")
    folder = tmp_path / stem
    names = images(folder, 20)
    flow = workflow(tmp_path / "flow.json", stem, pause=0.3)
    victim = f"{host(live[SECOND])} [2/2]"
    running = Running(command([live[FIRST].url, live[SECOND].url], flow, folder))
    # Not a terminal: a plain line per image; kill the second server after its third.
    running.wait_until(lambda: any(line.startswith(f"{victim} 3/10 ") for line in running.stderr))
    live.kill(SECOND)
    assert running.finish() == 1, running.text()
    assert any(line.startswith(f"{victim}: incomplete at ") for line in running.stderr)
    assert running.stderr[-1].endswith(f"; not finished: {victim} (exit 1)"), running.text()
    # The other server finished its shard.
    assert sources(report_for(live[FIRST], stem)) == shard_of(names, 0, 2)
    before = report_for(live[SECOND], stem)
    assert 3 <= len(before) < 10, "the kill must land mid-shard"

    live.revive()  # the second server again, on its root (its batch state), at a new port
    urls = [live[FIRST].url, live[SECOND].url]
    status, rerun = run(command(urls, flow, folder, "--json"))
    assert status == 0, rerun.text()
    finished = ends(rerun)
    assert (finished[0]["outcome"], finished[1]["outcome"]) == ("complete", "done")
    after = report_for(live[SECOND], stem)
    assert after[: len(before)] == before
    missing = sorted(set(shard_of(names, 1, 2)) - {line["source"] for line in before})
    assert sources(after[len(before) :]) == missing  # only the rest, each once
    assert len(report_for(live[FIRST], stem)) == 10  # nothing again on the first
    made = outputs(live[FIRST], stem) + outputs(live[SECOND], stem)
    assert sorted(source_of(name) for name in made) == names


def test_ctrl_c_stops_every_server_and_the_same_command_resumes(
    live: Servers, tmp_path: Path
) -> None:
    stem = own_stem("stop")
    folder = tmp_path / stem
    names = images(folder, 16)
    flow = workflow(tmp_path / "flow.json", stem, pause=0.3)
    urls = [live[FIRST].url, live[SECOND].url]
    running = Running(command(urls, flow, folder, "--json"))

    def both_under_way() -> bool:
        done = {e["shard"]: e["done"] for e in running.events() if e["event"] == "progress"}
        return len(done) == 2 and min(done.values()) >= 2

    running.wait_until(both_under_way)
    running.interrupt()
    assert running.finish() == 130, running.text()
    stopped = ends(running)
    assert [stopped[i]["outcome"] for i in (0, 1)] == ["stopped", "stopped"]
    assert running.events()[-1]["exit"] == 130
    wait_idle(live[FIRST], live[SECOND])
    for index in (FIRST, SECOND):
        batch = stopped[index]["batch_id"]
        status = get_json(f"{urls[index]}/api/clientid_bridge/batch/{batch}")
        assert status["stopped"] and status["done"] < 8, status
    counts = [len(report_for(live[index], stem)) for index in (FIRST, SECOND)]

    status, rerun = run(command(urls, flow, folder, "--json"))
    assert status == 0, rerun.text()
    for index in (FIRST, SECOND):
        lines = report_for(live[index], stem)
        assert len(lines) == 8 and sources(lines) == shard_of(names, index, 2), counts
    made = outputs(live[FIRST], stem) + outputs(live[SECOND], stem)
    assert sorted(source_of(name) for name in made) == names


def test_a_server_without_the_package_is_named_and_nothing_is_queued_anywhere(
    live: Servers, tmp_path: Path
) -> None:
    images(tmp_path / "bare", 4)
    flow = workflow(tmp_path / "flow.json", "bare")
    seen = [prompts_seen(live[index]) for index in (FIRST, BARE)]
    status, running = run(command([live[FIRST].url, live[BARE].url], flow, tmp_path / "bare"))
    assert status == 2, running.text()
    said = "\n".join(running.stderr)
    assert f"{host(live[BARE])}: the workflow's nodes are missing there: " in said
    assert "(is comfy-clientid-bridge installed there?)" in said
    assert f"{host(live[FIRST])}:" not in said  # the good server is not blamed
    assert [prompts_seen(live[index]) for index in (FIRST, BARE)] == seen
    assert report_for(live[FIRST], "bare") == []


def test_an_unreachable_server_is_an_error_before_anything_is_queued(
    live: Servers, tmp_path: Path
) -> None:
    images(tmp_path / "gone", 4)
    flow = workflow(tmp_path / "flow.json", "gone")
    nowhere = f"http://127.0.0.1:{free_port()}"
    seen = prompts_seen(live[FIRST])
    status, running = run(command([live[FIRST].url, nowhere], flow, tmp_path / "gone", "--json"))
    assert status == 2, running.text()
    [error] = running.events()
    assert error["event"] == "error"
    assert error["message"].startswith("nothing was queued:")
    assert f"cannot reach ComfyUI at {nowhere}" in error["message"]
    assert prompts_seen(live[FIRST]) == seen
