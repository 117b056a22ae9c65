"""One folder over three real ComfyUIs: static shards against work that flows, and failures.

Run: python bench/multi_server.py   (needs a ComfyUI checkout: COMFYUI_PATH/COMFYUI_PYTHON,
or eval "$(bash scripts/comfyui_matrix.sh env)" and CIB_BENCH_CELL=0.8.0 to pick one)

Three servers on this machine (--cpu), identical but for a stand-in node that holds each image
HOLDS seconds (tests/integration/slow_pack, $CIB_TEST_HOLD_SECONDS per server): two fast, one
slow. 60 tiny PNGs. Side by side in one run, alternating (twice; once more at ten times
the holds, where ComfyUI's own CPU per image is small beside the hold):
  static: `batch --static` (the old code path, kept as that flag: server k of n loops over
          every n-th image by itself);
  flow:   `batch` (one prompt per image to whichever server is free).
makespan / ideal, where ideal = images / the sum of the servers' rates, each measured alone
first with the same runner on CALIBRATION images (its steady rate: between the first and the
last image finished). Target for flow: <= 1.2.
Then the failures, each counted by source name over every server's output folder:
  kill:    a fast server SIGKILLed a third of the way in (exit 0, each image saved once);
  restart: the same with longer holds, and the server started again at its address mid-run
           (it gets work again);
  runner:  the runner SIGKILLed a third of the way in, then the same command again;
  hung:    a server SIGSTOPped a third of the way in, SIGCONTed once its images moved (a
           late finish; the servers share an output folder);
  upload:  --upload --download: every output arrives locally, byte for byte the server's.
Prints the load average: the machine is shared, so only ratios of one run mean much.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_clientid_bridge.tools.launcher import REPO, Comfy, running_comfyui  # noqa: E402

SLOW_PACK = REPO / "tests" / "integration" / "slow_pack"
EXAMPLE = REPO / "examples" / "batch_folder.api.json"
HOLDS = (0.05, 0.05, 0.4)
# Ten times longer: ComfyUI's own work per image (~0.1 s of CPU here) is then small beside
# the hold, so three servers on two shared cores measure the scheduling, not CPU contention.
SCALED = (0.5, 0.5, 4.0)
RESTART_HOLDS = (1.0, 1.0, 8.0)  # long enough that a restarted server is back mid-run
IMAGES, CALIBRATION = 60, 8
# Which parts run (CIB_BENCH_PARTS=scaled,restart for some): all by default.
PARTS = set(os.environ.get("CIB_BENCH_PARTS", "base,failures,scaled,restart").split(","))
# A git revision whose runner runs too, as "before", beside this tree's (same servers, same
# load): CIB_BENCH_BEFORE=main, say. Its package is exported to a temporary folder.
BEFORE = os.environ.get("CIB_BENCH_BEFORE", "")
ROUNDS = int(os.environ.get("CIB_BENCH_ROUNDS", "3"))


class Servers:
    def __init__(self, root: Path, holds: tuple[float, ...]) -> None:
        self.root, self.holds = root, holds
        self.stacks = [ExitStack() for _ in holds]
        self.comfies = [self.start(index) for index in range(len(holds))]

    def start(self, index: int, port: int | None = None) -> Comfy:
        return self.stacks[index].enter_context(
            running_comfyui(
                self.root / f"s{index}",
                packs=[REPO, SLOW_PACK],
                env={"CIB_TEST_HOLD_SECONDS": str(self.holds[index])},
                port=port,
            )
        )

    def kill(self, index: int) -> None:
        os.kill(self.comfies[index].process.pid, signal.SIGKILL)
        self.comfies[index].process.wait()
        self.stacks[index].close()

    def restart(self, index: int) -> None:
        port = int(self.comfies[index].url.rsplit(":", 1)[1])
        self.comfies[index] = self.start(index, port)

    def close(self) -> None:
        for stack in self.stacks:
            stack.close()

    def saved(self, subfolder: str) -> Counter[str]:
        """Output files over every server, by the source image they came from."""
        return Counter(
            path.name.removesuffix("_out.png") + ".png"
            for index in range(len(self.holds))
            for path in (self.root / f"s{index}" / "output" / subfolder).glob("*.png")
        )


def make_images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    names = [f"img{n:03}.png" for n in range(count)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)
    return names


def workflow(path: Path, subfolder: str) -> Path:
    graph = json.loads(EXAMPLE.read_text())
    graph["2"]["inputs"]["subfolder"] = subfolder
    graph["5"] = {"class_type": "ClientIdBridgeTest_Hold", "inputs": {"image": ["1", 0]}}
    graph["2"]["inputs"]["images"] = ["5", 0]
    path.write_text(json.dumps(graph))
    return path


class Run:
    def __init__(
        self,
        work: Path,
        tag: str,
        servers: list[str],
        folder: Path,
        *extra: str,
        cwd: Path = REPO,
    ):
        self.cwd = cwd
        flow = workflow(work / f"{tag}.json", tag)
        self.args = [sys.executable, "-m", "comfy_clientid_bridge", "batch", "--json"]
        self.args += ["--workflow", str(flow), "--folder", str(folder)]
        self.args += ["--ledger", str(work / f"{tag}.sqlite"), *extra]
        for server in servers:
            self.args += ["--server", server]
        self.early: list[str] = []

    def start(self) -> subprocess.Popen[str]:
        self.began = time.monotonic()
        return subprocess.Popen(
            self.args, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait(self, process: subprocess.Popen[str]) -> tuple[int, float, list[dict[str, Any]]]:
        out, err = process.communicate(timeout=600)
        took = time.monotonic() - self.began
        if process.returncode not in (0, -9):
            print(err[-2000:], file=sys.stderr)
        lines = [*self.early, *out.splitlines()]
        self.early = []
        return process.returncode, took, [json.loads(line) for line in lines if line.strip()]

    def images_done_then(self, process: subprocess.Popen[str], count: int) -> None:
        """Reads events until `count` images are done (kept for `wait`)."""
        assert process.stdout is not None
        while sum('"event":"image"' in line for line in self.early) < count:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"the runner ended early: {process.wait()}")
            self.early.append(line)


def settle(urls: list[str]) -> None:
    """Until every server's queue is empty: a static run's last Batch Next may still be
    running when its runner exits, and would hold back the next run measured."""
    for url in urls:
        for _ in range(100):
            with urllib.request.urlopen(f"{url}/queue", timeout=10) as reply:
                queue = json.load(reply)
            if not queue["queue_running"] and not queue["queue_pending"]:
                break
            time.sleep(0.05)
    time.sleep(0.5)  # what ComfyUI does after a prompt (its caches, gc), done for all alike


def run_once(work: Path, tag: str, servers: list[str], folder: Path, *extra: str) -> float:
    return timed(work, tag, servers, folder, *extra)[0]


def timed(
    work: Path, tag: str, servers: list[str], folder: Path, *extra: str, cwd: Path = REPO
) -> tuple[float, float | None]:
    """(seconds from the command's start to its exit, seconds from the runner's start line
    to its last image: the flowing runner only)."""
    run = Run(work, tag, servers, folder, *extra, cwd=cwd)
    status, took, events = run.wait(run.start())
    assert status == 0, f"{tag}: exit {status}"
    finished = [e["elapsed"] for e in events if e["event"] == "image" and "elapsed" in e]
    return took, max(finished) if finished else None


def calibrate(work: Path, servers: Servers, folder: Path, tag: str) -> list[float]:
    """Each server alone: its steady rate, from the runner's time of each finished image."""
    rates = []
    for index, comfy in enumerate(servers.comfies):
        run_once(work, f"{tag}warm{index}", [comfy.url], folder / "warm")
        run = Run(work, f"{tag}alone{index}", [comfy.url], folder / "calibration")
        status, _, events = run.wait(run.start())
        assert status == 0
        times = sorted(e["elapsed"] for e in events if e["event"] == "image")
        rates.append((len(times) - 1) / (times[-1] - times[0]))
    return rates


def compare(
    work: Path, servers: Servers, folder: Path, rates: list[float], rounds: int, name: str
) -> None:
    urls = [comfy.url for comfy in servers.comfies]
    ideal = IMAGES / sum(rates)
    modes = ["static", "flow", *(["before"] if BEFORE else [])]
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    inside: dict[str, list[float]] = {mode: [] for mode in modes}
    for number in range(rounds):
        # The flowing modes swap places each round: the one right after a static run
        # starts on servers still finishing theirs.
        order = modes if number % 2 == 0 else [modes[0], *reversed(modes[1:])]
        for mode in order:
            tag = f"{name}{mode}{number}"
            cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
            extra = ("--static",) if mode == "static" else ()
            cwd = work / "before" if mode == "before" else REPO
            settle(urls)
            took, in_run = timed(work, tag, urls, folder / "sixty", *extra, cwd=cwd)
            assert servers.saved(tag) == Counter(f"img{n:03}.png" for n in range(IMAGES)), tag
            results[mode].append(took)
            if in_run is not None:
                inside[mode].append(in_run)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            runner_cpu = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
            line = "" if in_run is None else f"; start line to last image {in_run / ideal:.2f}"
            print(
                f"  {tag:14} makespan {took:6.2f} s  / ideal {took / ideal:5.2f}  "
                f"(runner CPU {runner_cpu:.2f} s; load {os.getloadavg()[0]:.1f}{line})"
            )
    holds = ", ".join(f"{hold * 1000:.0f}" for hold in servers.holds)
    print(
        f"holds {holds} ms: ideal {ideal:.2f} s "
        f"(rates alone {', '.join(f'{r:.2f}' for r in rates)} img/s)"
    )
    for mode, times in results.items():
        own = ""
        if inside[mode]:
            own = f" (start line to last image {statistics.median(inside[mode]) / ideal:.2f})"
        print(f"  {mode:7} median makespan / ideal: {statistics.median(times) / ideal:.2f}{own}")


def killed(work: Path, servers: Servers, folder: Path, *, restart: bool) -> None:
    tag = "restart" if restart else "kill"
    urls = [comfy.url for comfy in servers.comfies]
    run = Run(work, tag, urls, folder / "sixty", "--lost-after", "5")
    process = run.start()
    run.images_done_then(process, IMAGES // 3)
    servers.kill(0)
    killed_at = time.monotonic() - run.began
    if restart:
        servers.restart(0)
        print(
            f"  {tag}: server 0 killed at {killed_at:.1f} s, back at "
            f"{time.monotonic() - run.began:.1f} s"
        )
    status, took, events = run.wait(process)
    counts = servers.saved(tag)
    once = counts == Counter(f"img{n:03}.png" for n in range(IMAGES))
    summary = events[-1]
    name0 = urls[0].removeprefix("http://")
    # Image times count from the runner's start line, a little after the process start:
    # an image with a time past `killed_at` finished after the kill.
    after = [
        e
        for e in events
        if e["event"] == "image" and e["server"] == name0 and e["elapsed"] > killed_at
    ]
    print(
        f"{tag:7}: exit {status}, {took:.1f} s, files {sum(counts.values())} for "
        f"{len(counts)} sources, each once: {once}, moved {len(summary['moves'])}, "
        f"server 0 did {summary['servers'].get(name0, 0)}, {len(after)} of them after the kill"
    )


def hung(work: Path, servers: Servers, folder: Path) -> None:
    """A server stopped (SIGSTOP: it answers nothing, its process keeps its state) a third
    of the way in, continued once its images were moved: it finishes the image it held,
    late. The servers share one output folder (the saver's output_folder), where the
    saver's "skip" keeps the late one from writing a second file."""
    shared = work / "shared-output"
    urls = [comfy.url for comfy in servers.comfies]
    run = Run(work, "hung", urls, folder / "sixty", "--lost-after", "2")
    graph = json.loads(Path(run.args[run.args.index("--workflow") + 1]).read_text())
    graph["2"]["inputs"]["output_folder"] = str(shared)
    Path(run.args[run.args.index("--workflow") + 1]).write_text(json.dumps(graph))
    process = run.start()
    run.images_done_then(process, IMAGES // 3)
    pid = servers.comfies[0].process.pid
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic() - run.began
    assert process.stdout is not None
    while '"event":"moved"' not in run.early[-1]:
        run.early.append(process.stdout.readline())
    os.kill(pid, signal.SIGCONT)
    moved_at = time.monotonic() - run.began
    status, took, events = run.wait(process)
    time.sleep(3)  # the late image, if it finishes after the run
    counts = Counter(
        path.name.removesuffix("_out.png") + ".png" for path in (shared / "hung").glob("*.png")
    )
    once = counts == Counter(f"img{n:03}.png" for n in range(IMAGES))
    summary = events[-1]
    print(
        f"hung   : stopped at {stopped_at:.1f} s, its images moved and continued at "
        f"{moved_at:.1f} s; exit {status}, {took:.1f} s, files {sum(counts.values())} for "
        f"{len(counts)} sources, each once: {once}; moved {len(summary['moves'])}, "
        f"late finishes discarded: {len(summary['discarded'])}"
    )


def runner_killed(work: Path, servers: Servers, folder: Path) -> None:
    urls = [comfy.url for comfy in servers.comfies]
    run = Run(work, "runner", urls, folder / "sixty")
    process = run.start()
    run.images_done_then(process, IMAGES // 3)
    process.kill()
    process.wait()
    run.early = []
    status, took, events = run.wait(run.start())
    counts = servers.saved("runner")
    once = counts == Counter(f"img{n:03}.png" for n in range(IMAGES))
    print(
        f"runner : killed at {IMAGES // 3} images; again: exit {status}, "
        f"{events[0]['done_before']} done before, {events[-1]['servers']} this time; files "
        f"{sum(counts.values())} for {len(counts)} sources, each once: {once}"
    )


def upload(work: Path, servers: Servers, folder: Path) -> None:
    urls = [comfy.url for comfy in servers.comfies]
    local = work / "downloaded"
    run_once(work, "upload", urls, folder / "sixty", "--upload", "--download", str(local))
    same = 0
    for path in local.glob("*.png"):
        for index in range(len(servers.holds)):
            there = servers.root / f"s{index}" / "output" / "upload" / path.name
            same += there.exists() and there.read_bytes() == path.read_bytes()
    left = [
        index
        for index in range(len(servers.holds))
        if (servers.root / f"s{index}" / "input" / "clientid_bridge_uploads").exists()
    ]
    print(
        f"upload : {len(list(local.glob('*.png')))} files downloaded, {same} byte for byte "
        f"the server's; uploads left on servers: {left or 'none'}"
    )


def main() -> None:
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        folder = work / "in"
        make_images(folder / "sixty", IMAGES)
        make_images(folder / "calibration", CALIBRATION)
        make_images(folder / "warm", 2)
        # Compiled before the first run, as pip compiles an installed package (and as the
        # other revision's is below): with PYTHONDONTWRITEBYTECODE set, each run would
        # otherwise compile the package again (~40 ms of its makespan).
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(REPO / "comfy_clientid_bridge")]
        )
        if BEFORE:  # the other revision's package, run from its own folder
            (work / "before").mkdir()
            archive = subprocess.run(
                ["git", "archive", BEFORE, "comfy_clientid_bridge"],
                cwd=REPO,
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(work / "before")], input=archive, check=True)
            # Compiled now, as this tree's is: its first run would pay for that.
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(work / "before")])
            print(f"before: the runner of {BEFORE}")
        if {"base", "failures"} & PARTS:
            servers = Servers(work / "servers", HOLDS)
            try:
                if "base" in PARTS:
                    rates = calibrate(work, servers, folder, "base")
                    compare(work, servers, folder, rates, ROUNDS, "base")
                if "failures" in PARTS:
                    killed(work, servers, folder, restart=False)
                    servers.restart(0)
                    runner_killed(work, servers, folder)
                    hung(work, servers, folder)
                    upload(work, servers, folder)
            finally:
                servers.close()
        if "scaled" in PARTS:
            servers = Servers(work / "scaled-servers", SCALED)
            try:
                rates = calibrate(work, servers, folder, "scaled")
                compare(work, servers, folder, rates, 1, "scaled")
            finally:
                servers.close()
        if "restart" in PARTS:
            servers = Servers(work / "slow-servers", RESTART_HOLDS)
            try:
                killed(work, servers, folder, restart=True)
            finally:
                servers.close()
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
