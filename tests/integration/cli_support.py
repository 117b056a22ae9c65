"""What the terminal runner's integration tests share: tiny image folders, the example
workflow with an optional pause, ComfyUIs started side by side, the command in the background."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from PIL import Image

from comfy_clientid_bridge.tools.launcher import REPO, Comfy, running_comfyui

EXAMPLE = REPO / "examples" / "batch_folder.api.json"
# A pack of the tests: its node sleeps, so 64x64 images give a batch slow enough to kill.
SLOW_PACK = Path(__file__).resolve().parent / "slow_pack"
PAUSE = "ClientIdBridgeTest_Pause"
HOLD = "ClientIdBridgeTest_Hold"
WAIT = 180.0  # seconds; generous: other servers share the machine's two cores


def use_matrix_cell(request: pytest.FixtureRequest) -> None:
    """A module fixture that starts ComfyUIs is set up again for each ComfyUI of the test
    matrix (tests/integration/conftest.py `comfyui_cell`), where there is one."""
    try:
        request.getfixturevalue("comfyui_cell")
    except pytest.FixtureLookupError:
        pass


def own_stem(name: str) -> str:
    """A folder name (its images, outputs and report) no earlier try of the test on the
    module's servers used: a rerun after a failure finds only its own files."""
    return f"{name}{uuid.uuid4().hex[:6]}x"


def images(folder: Path, count: int, *, corrupt: bool = False) -> list[str]:
    """`count` 64x64 noise PNGs named after the folder (each test's own stems); their names."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    names = []
    for number in range(count):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        names.append(f"{folder.name}{number:02}.png")
        Image.fromarray(pixels).save(folder / names[-1], compress_level=0)
    if corrupt:
        (folder / "zz_corrupt.png").write_bytes(b"not a png")
    return names


def workflow(path: Path, subfolder: str, *, pause: float = 0.0, hold: bool = False) -> Path:
    """The example workflow saving into `subfolder`; with a pause node before the saver, or
    a hold node (each server's own $CIB_TEST_HOLD_SECONDS)."""
    graph = json.loads(EXAMPLE.read_text())
    graph["2"]["inputs"]["subfolder"] = subfolder
    if pause:
        graph["5"] = {"class_type": PAUSE, "inputs": {"image": ["1", 0], "seconds": pause}}
        graph["2"]["inputs"]["images"] = ["5", 0]
    elif hold:
        graph["5"] = {"class_type": HOLD, "inputs": {"image": ["1", 0]}}
        graph["2"]["inputs"]["images"] = ["5", 0]
    path.write_text(json.dumps(graph))
    return path


def command(
    servers: list[str], flow: Path, folder: Path, *extra: str, program: list[str] | None = None
) -> list[str]:
    args = program or [sys.executable, "-m", "comfy_clientid_bridge"]
    args += ["batch", "--workflow", str(flow), "--folder", str(folder), *extra]
    for server in servers:
        args += ["--server", server]
    return args


def static_command(
    servers: list[str], flow: Path, folder: Path, *extra: str, program: list[str] | None = None
) -> list[str]:
    """The runner the old way: each server loops over its own shard."""
    return command(servers, flow, folder, "--static", *extra, program=program)


class Running:
    """The command in the background; its stdout and stderr lines collected as they come."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._news: queue.Queue[None] = queue.Queue()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
            for pipe, lines in (
                (self.process.stdout, self.stdout),
                (self.process.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: IO[str], lines: list[str]) -> None:
        for line in pipe:
            lines.append(line.rstrip("\n"))
            self._news.put(None)
        pipe.close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.stdout)]

    def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None and self._news.empty():
                raise AssertionError(f"the command ended first:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout} s in vain:\n{self.text()}")
            try:
                self._news.get(timeout=0.5)
            except queue.Empty:
                pass

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = WAIT) -> int:
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        for reader in self._readers:
            reader.join(timeout=10)
        return status

    def text(self) -> str:
        return "\n".join(["stdout:", *self.stdout, "stderr:", *self.stderr])


def run(args: list[str], timeout: float = WAIT) -> tuple[int, Running]:
    running = Running(args)
    return running.finish(timeout), running


class Servers:
    """ComfyUIs, each on its own root with its own packs; a killed one starts again on its
    root, where its batch state is. Started one by one: on two cores, booting side by side
    saves nothing and makes each boot slower than the launcher waits for."""

    def __init__(self, stack: ExitStack, specs: list[tuple[Path, list[Path]]]) -> None:
        self.stack, self.specs = stack, specs
        self.comfies = [self._start(index) for index in range(len(specs))]

    def _start(self, index: int) -> Comfy:
        root, packs = self.specs[index]
        return self.stack.enter_context(running_comfyui(root, packs=packs))

    def __getitem__(self, index: int) -> Comfy:
        return self.comfies[index]

    def kill(self, index: int) -> None:
        os.kill(self.comfies[index].process.pid, signal.SIGKILL)
        self.comfies[index].process.wait(timeout=30)

    def revive(self) -> None:
        """Starts again every server that is not running (so a failed test harms no other)."""
        for index, comfy in enumerate(self.comfies):
            if comfy.process.poll() is not None:
                self.comfies[index] = self._start(index)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def prompts_seen(comfy: Comfy) -> int:
    """Prompts the server ran or holds: its history plus its queue."""
    history = get_json(f"{comfy.url}/api/history?max_items=100000")
    waiting = get_json(f"{comfy.url}/api/queue")
    return len(history) + len(waiting["queue_running"]) + len(waiting["queue_pending"])


def report_lines(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def outputs(comfy: Comfy, subfolder: str) -> list[str]:
    return sorted(path.name for path in (comfy.output / subfolder).glob("*.png"))


def source_of(output_name: str) -> str:
    """The input an output came from (the example saver appends `_out`)."""
    return output_name.removesuffix("_out.png") + ".png"


def shard_of(names: list[str], index: int, count: int) -> list[str]:
    """What the loader gives shard `index` of `count` (natural order, every count-th)."""
    return sorted(names)[index::count]
