"""Where a flowing run's makespan goes: the runner's phases, and each server's busy time.

Run: python bench/flow_timeline.py   (the ComfyUI as for bench/multi_server.py; CIB_BENCH_RUNS)

The servers and images of bench/multi_server.py's base part (holds 50, 50, 400 ms, 60
images; the ideal from the same calibration). Each run is the real command
(`python -m comfy_clientid_bridge batch`), started through a small wrapper that notes the
time of its phases (imports done, the preflight, the websockets up, the first prompt
posted, the report written, main() returned); the parent notes the launch and the exit. Each
server's own view comes from ComfyUI's history (the execution_start and execution_success
timestamps of every prompt): when it first started work, when it ended, how long it was busy,
and the gaps between its images (a gap of 0.3-0.4 s is ComfyUI's own gc.collect(), run every
10 s by main.py prompt_worker). Prints the load average: the machine is shared.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import multi_server as bench  # noqa: E402

RUNS = int(os.environ.get("CIB_BENCH_RUNS", "4"))

# Runs as the runner's main module: the command as the console script runs it, with marks.
WRAPPER = """
import time
marks = [("python started", time.time())]
import json, os, sys
def mark(name):
    marks.append((name, time.time()))
from comfy_clientid_bridge import __main__ as command
from comfy_clientid_bridge.tools.http_client import import_aiohttp_without_certificates
import_aiohttp_without_certificates()
from comfy_clientid_bridge.tools import cli, flow
mark("imports done")
def timed(owner, name, label, first_only=False):
    original, calls = getattr(owner, name), []
    async def wrapper(*args, **kwargs):
        calls.append(1)
        if not first_only or len(calls) == 1:
            mark(f"{label} begins")
        try:
            return await original(*args, **kwargs)
        finally:
            if not first_only or len(calls) == 1:
                mark(f"{label} ends")
    setattr(owner, name, wrapper)
timed(flow, "preflight", "preflight")
timed(flow.Runner, "_connected", "a server connected", first_only=True)
timed(flow.Runner, "_post", "first prompt posted", first_only=True)
write_report = flow.Runner.write_report
def report(self):
    mark("last image done, report begins")
    try:
        return write_report(self)
    finally:
        mark("report written")
flow.Runner.write_report = report
sys.argv = ["comfy-clientid-bridge", *sys.argv[1:]]
status = command.main()
mark("main() returned")
with open(os.environ["CIB_TIMELINE_MARKS"], "w") as file:
    json.dump(marks, file)
import logging
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
"""


def server_spans(url: str, prompt_ids: list[str], began: float) -> list[tuple[float, float]]:
    """(start, end) of each prompt on the server, in seconds after the launch."""
    spans = []
    for prompt_id in prompt_ids:
        with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=10) as reply:
            entry = json.load(reply)[prompt_id]
        stamps = {m[0]: m[1]["timestamp"] / 1000 for m in entry["status"]["messages"]}
        spans.append((stamps["execution_start"] - began, stamps["execution_success"] - began))
    return sorted(spans)


def one_run(work: Path, tag: str, urls: list[str], folder: Path, ideal: float) -> float:
    run = bench.Run(work, tag, urls, folder)
    wrapper = work / "timeline_wrapper.py"
    wrapper.write_text(WRAPPER)
    marks_file = work / f"{tag}.marks.json"
    env = {**os.environ, "CIB_TIMELINE_MARKS": str(marks_file), "PYTHONPATH": str(bench.REPO)}
    began = time.time()
    done = subprocess.run(
        [sys.executable, str(wrapper), *run.args[3:]],
        cwd=bench.REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    ended = time.time()
    assert done.returncode == 0, done.stderr[-2000:]
    makespan = ended - began
    print(f"{tag}: makespan {makespan:.3f} s = {makespan / ideal:.2f} x ideal")
    for name, at in json.loads(marks_file.read_text()):
        print(f"  {at - began:6.3f}  {name}")
    print(f"  {makespan:6.3f}  exit (seen by the launcher)")
    ledger = sqlite3.connect(work / f"{tag}.sqlite")
    rows = ledger.execute("SELECT server, prompt_id FROM images").fetchall()
    ledger.close()
    for url in urls:
        spans = server_spans(url, [pid for server, pid in rows if server == url], began)
        busy = sum(end - start for start, end in spans)
        gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(spans)]
        print(
            f"  {url.rsplit(':', 1)[1]}: {len(spans):2} images, first begins {spans[0][0]:.3f},"
            f" last ends {spans[-1][1]:.3f}; busy {busy:.3f} s ({busy / len(spans) * 1000:.0f}"
            f" ms each); gaps {sum(gaps):.3f} s, longest {max(gaps, default=0):.3f}"
        )
    return makespan


def main() -> None:
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        folder = work / "in"
        bench.make_images(folder / "sixty", bench.IMAGES)
        bench.make_images(folder / "calibration", bench.CALIBRATION)
        bench.make_images(folder / "warm", 2)
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(bench.REPO / "comfy_clientid_bridge")]
        )
        servers = bench.Servers(work / "servers", bench.HOLDS)
        try:
            rates = bench.calibrate(work, servers, folder, "timeline")
            ideal = bench.IMAGES / sum(rates)
            print(f"ideal {ideal:.3f} s (rates alone {', '.join(f'{r:.2f}' for r in rates)})")
            urls = [comfy.url for comfy in servers.comfies]
            makespans: list[Any] = []
            for number in range(RUNS):
                bench.settle(urls)
                makespans.append(one_run(work, f"run{number}", urls, folder / "sixty", ideal))
            ratios = sorted(m / ideal for m in makespans)
            print(f"makespan / ideal: {', '.join(f'{r:.2f}' for r in ratios)}")
        finally:
            servers.close()
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
