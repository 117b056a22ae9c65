"""`comfy-clientid-bridge batch` as work that flows, over two real ComfyUIs: a fast one and a
slow one (the hold node's time per server), one killed, one joining late, the runner killed,
and a folder only the runner reads (--upload --download)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from integration.cli_support import (
    SLOW_PACK,
    Running,
    command,
    get_json,
    images,
    report_lines,
    run,
    source_of,
    use_matrix_cell,
    workflow,
)
from integration.support import require_comfyui

from comfy_clientid_bridge.tools.launcher import REPO, Comfy, running_comfyui

pytestmark = pytest.mark.integration

FAST, SLOW = 0, 1
HOLDS = ("0.05", "0.4")  # seconds per image on each server (the hold node)


class Pair:
    """A fast and a slow ComfyUI; either can be killed and started again at its address."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self.stacks = [ExitStack() for _ in roots]
        self.comfies: list[Comfy] = [self._start(index) for index in range(len(roots))]

    def _start(self, index: int, port: int | None = None) -> Comfy:
        return self.stacks[index].enter_context(
            running_comfyui(
                self.roots[index],
                packs=[REPO, SLOW_PACK],
                env={"CIB_TEST_HOLD_SECONDS": HOLDS[index]},
                port=port,
            )
        )

    def __getitem__(self, index: int) -> Comfy:
        return self.comfies[index]

    def kill(self, index: int) -> None:
        os.kill(self.comfies[index].process.pid, signal.SIGKILL)
        self.comfies[index].process.wait(timeout=30)
        self.stacks[index].close()

    def start_again(self, index: int) -> None:
        """At the same address: to the runner, the same --server coming back."""
        if self.comfies[index].process.poll() is not None:
            port = int(self.comfies[index].url.rsplit(":", 1)[1])
            self.comfies[index] = self._start(index, port)

    def close(self) -> None:
        for stack in self.stacks:
            stack.close()


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pair]:
    use_matrix_cell(request)
    require_comfyui()
    servers = Pair([tmp_path_factory.mktemp("fast"), tmp_path_factory.mktemp("slow")])
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture
def live(pair: Pair) -> Pair:
    for index in (FAST, SLOW):
        pair.start_again(index)
    return pair


def flow_command(pair: Pair, flow: Path, folder: Path, tmp_path: Path, *extra: str) -> list[str]:
    urls = [pair[FAST].url, pair[SLOW].url]
    ledger = ["--ledger", str(tmp_path / "ledger.sqlite"), "--report", str(tmp_path / "r.jsonl")]
    return command(urls, flow, folder, "--json", "--lost-after", "2", *ledger, *extra)


def saved(pair: Pair, subfolder: str) -> Counter[str]:
    """Output files across both servers, counted by the source they came from."""
    return Counter(
        source_of(path.name)
        for comfy in pair.comfies
        for path in (comfy.root / "output" / subfolder).glob("*.png")
    )


def image_events(running: Running) -> list[dict[str, Any]]:
    return [event for event in running.events() if event["event"] == "image"]


def by_server(running: Running, comfy: Comfy) -> int:
    name = comfy.url.removeprefix("http://")
    return sum(event["server"] == name for event in image_events(running))


def test_images_flow_to_both_servers_and_each_is_saved_once(live: Pair, tmp_path: Path) -> None:
    names = images(tmp_path / "flowing", 16)
    flow = workflow(tmp_path / "flow.json", tmp_path.name, hold=True)
    status, running = run(flow_command(live, flow, tmp_path / "flowing", tmp_path))
    assert status == 0, running.text()
    assert saved(live, tmp_path.name) == Counter(names)
    # The fast server takes most: no share is fixed in advance.
    assert by_server(running, live[FAST]) > by_server(running, live[SLOW]) >= 1, running.text()
    report = report_lines(tmp_path / "r.jsonl")
    assert sorted(line["source"] for line in report) == names
    assert {line["server"] for line in report} == {live[FAST].url, live[SLOW].url}
    for line in report:
        assert line["status"] == "done"
        [output] = line["outputs"]
        assert source_of(Path(output).name) == line["source"]
    assert running.events()[-1]["counts"]["done"] == 16


def test_a_server_killed_mid_run_has_its_images_moved_and_the_run_ends_zero(
    live: Pair, tmp_path: Path
) -> None:
    names = images(tmp_path / "killed", 16)
    flow = workflow(tmp_path / "flow.json", tmp_path.name, hold=True)
    running = Running(flow_command(live, flow, tmp_path / "killed", tmp_path))
    running.wait_until(lambda: by_server(running, live[SLOW]) >= 1)
    live.kill(SLOW)
    assert running.finish() == 0, running.text()
    assert saved(live, tmp_path.name) == Counter(names)  # each exactly once
    summary = running.events()[-1]
    slow = live[SLOW].url.removeprefix("http://")
    assert summary["moves"] and all(f": {slow} -> " in move for move in summary["moves"])
    assert summary["counts"] == {"pending": 0, "leased": 0, "done": 16, "failed": 0}


def test_a_server_that_answers_only_after_the_start_gets_work(pair: Pair, tmp_path: Path) -> None:
    pair.start_again(FAST)
    live = pair  # the slow one is down (killed by the test before, or now): not started first
    if live[SLOW].process.poll() is None:
        live.kill(SLOW)
    names = images(tmp_path / "late", 48)
    flow = workflow(tmp_path / "flow.json", tmp_path.name, pause=0.5)
    running = Running(flow_command(live, flow, tmp_path / "late", tmp_path))
    running.wait_until(lambda: by_server(running, live[FAST]) >= 1)
    live.start_again(SLOW)  # booting takes a while; the fast server works meanwhile
    assert running.finish() == 0, running.text()
    assert by_server(running, live[SLOW]) >= 1, running.text()
    assert saved(live, tmp_path.name) == Counter(names)
    slow = live[SLOW].url.removeprefix("http://")
    states = [
        e["state"] for e in running.events() if e["event"] == "server" and e["server"] == slow
    ]
    assert states == ["up"]
    assert any("not answering" in line for line in running.stderr), running.text()


def test_the_runner_killed_mid_run_then_run_again_does_only_the_rest(
    live: Pair, tmp_path: Path
) -> None:
    names = images(tmp_path / "again", 16)
    flow = workflow(tmp_path / "flow.json", tmp_path.name, pause=0.2)
    args = flow_command(live, flow, tmp_path / "again", tmp_path)
    first = Running(args)
    first.wait_until(lambda: len(image_events(first)) >= 4)
    first.process.kill()  # SIGKILL: no chance to tidy up; prompts stay queued on the servers
    first.finish()
    done_first = {event["source"] for event in image_events(first)}
    status, second = run(args)
    assert status == 0, second.text()
    # What finished while no runner listened (the first one's last 50 ms of commits among
    # them) is learnt from the servers' history, not run again.
    ran_again = {e["source"] for e in image_events(second) if "history" not in e["note"]}
    assert not done_first & ran_again
    assert saved(live, tmp_path.name) == Counter(names)  # nothing twice, nothing missing
    assert second.events()[0]["done_before"] + len(image_events(second)) == len(names)
    assert sorted(line["source"] for line in report_lines(tmp_path / "r.jsonl")) == names


def test_a_folder_only_the_runner_reads_is_uploaded_and_outputs_downloaded(
    live: Pair, tmp_path: Path
) -> None:
    folder = tmp_path / "mine"
    names = images(folder / "sub", 6)  # in a subfolder: mirrored in the download folder
    flow = workflow(tmp_path / "flow.json", tmp_path.name)
    local = tmp_path / "local"
    status, running = run(
        flow_command(live, flow, folder, tmp_path, "--upload", "--download", str(local))
    )
    assert status == 0, running.text()
    got = sorted(path.name for path in (local / "sub").iterdir())
    assert [source_of(name) for name in got] == names
    for comfy in live.comfies:
        for path in (comfy.root / "output" / tmp_path.name / "sub").glob("*.png"):
            assert (local / "sub" / path.name).read_bytes() == path.read_bytes()
        assert not (comfy.root / "input" / "clientid_bridge_uploads").exists()
        history = get_json(f"{comfy.url}/history?max_items=50")
        folders = {entry["prompt"][2]["1"]["inputs"]["folder"] for entry in history.values()}
        assert not any(str(folder) in used for used in folders)
    assert len(list(local.rglob("*.png"))) == 6


def test_a_server_that_does_not_read_the_folder_is_asked_and_gets_uploads(
    live: Pair, tmp_path: Path
) -> None:
    """The slow server allows only its own folders and one elsewhere (a roots file, read at
    each request): asked, it says it cannot read ours, so it alone gets uploads."""
    roots = live[SLOW].root / "user" / "clientid_bridge" / "roots.txt"
    roots.parent.mkdir(parents=True, exist_ok=True)
    roots.write_text(f"{tmp_path / 'elsewhere'}\n")
    try:
        folder = tmp_path / "shared"
        names = images(folder, 16)
        flow = workflow(tmp_path / "flow.json", tmp_path.name, hold=True)
        status, running = run(flow_command(live, flow, folder, tmp_path))
    finally:
        roots.unlink()
    assert status == 0, running.text()
    assert saved(live, tmp_path.name) == Counter(names)
    slow = live[SLOW].url.removeprefix("http://")
    notes = [e["message"] for e in running.events() if e["event"] == "note"]
    assert notes == [
        f"{slow}: does not read {folder} (not allowed on this server); its images are uploaded"
    ]
    assert running.events()[-1]["uploads"] == [slow]
    used = {}
    for comfy in live.comfies:
        history = get_json(f"{comfy.url}/history?max_items=50")
        used[comfy.url] = {
            entry["prompt"][2]["1"]["inputs"]["folder"]
            for entry in history.values()
            if entry["prompt"][2].get("2", {}).get("inputs", {}).get("subfolder") == tmp_path.name
        }
    assert used[live[FAST].url] == {str(folder)}
    assert used[live[SLOW].url]  # it took work (the fast one's share is no proof)
    assert all(name.startswith("clientid_bridge_uploads/") for name in used[live[SLOW].url])
    assert not (live[SLOW].root / "input" / "clientid_bridge_uploads").exists()
