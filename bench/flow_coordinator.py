"""The flowing runner's coordinator alone: how fast it hands out images, and its memory.

Run: python bench/flow_coordinator.py
  rate:   the runner (tools/flow.py run_flow, its real code: ledger, scheduler, websockets,
          POST /prompt per image) against SERVERS fake ComfyUIs that finish every prompt at
          once (tests/fake_flow_comfy.py, served from one other process), over IMAGES files.
          Images per second over the whole run. Target >= 2,000.
  memory: a fresh process builds the ledger of 1,000,000 images (the listing, then SQLite)
          and the scheduler over it; its peak RSS. Target <= 300 MB.
From the rate: servers at S seconds per image need servers/S hand-outs per second, so the
coordinator feeds rate x S servers. Prints the load average (a shared machine).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from comfy_clientid_bridge.tools.cli import prepare  # noqa: E402
from comfy_clientid_bridge.tools.flow import Settings, run_flow  # noqa: E402
from comfy_clientid_bridge.tools.flow_view import FlowView  # noqa: E402
from comfy_clientid_bridge.tools.launcher import free_port  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "batch_folder.api.json"
SERVERS, IMAGES, LEDGER_ROWS = 8, 20_000, 1_000_000

SERVE = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from aiohttp import web
from fake_flow_comfy import FakeFlowComfy

async def main():
    for port in {ports!r}:
        runner = web.AppRunner(FakeFlowComfy().app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    print("up", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

MEMORY = """
import resource, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from comfy_clientid_bridge.tools.ledger import Ledger
from comfy_clientid_bridge.tools.schedule import Scheduler
names = [f"part{{i // 1000:04}}/image_{{i:07}}.png" for i in range({rows})]
ledger = Ledger(Path({path!r}))
ledger.sync(names)
del names
plan = Scheduler(ledger.todo(), clock=time.monotonic)
print(len(plan.pending), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def rate(work: Path) -> tuple[float, float]:
    """(images per second of the run, images per second of the runner's own CPU time)."""
    ports = [free_port() for _ in range(SERVERS)]
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE.format(tests=tests, ports=ports)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        folder = work / "images"
        folder.mkdir()
        for number in range(IMAGES):
            (folder / f"img{number:06}.png").touch()
        graph, loader = prepare(json.loads(EXAMPLE.read_text()), folder)
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        settings = Settings(ledger=work / "ledger.sqlite", report=work / "report.jsonl")
        view = FlowView(out=io.StringIO())
        began, cpu = time.perf_counter(), time.process_time()
        status = asyncio.run(run_flow(urls, graph, loader, folder, settings, view, {}, {}))
        took, cpu = time.perf_counter() - began, time.process_time() - cpu
        assert status == 0, status
        return IMAGES / took, IMAGES / cpu
    finally:
        server.kill()
        server.wait()


def memory(work: Path) -> tuple[int, float]:
    script = MEMORY.format(
        repo=str(Path(__file__).resolve().parents[1]),
        rows=LEDGER_ROWS,
        path=str(work / "million.sqlite"),
    )
    began = time.perf_counter()
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    took = time.perf_counter() - began
    pending, max_rss_kb = answer.stdout.split()
    assert int(pending) == LEDGER_ROWS, answer.stderr
    return int(max_rss_kb) // 1024, took


def main() -> None:
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        per_second, per_cpu_second = rate(work)
        print(
            f"rate:   {per_second:,.0f} images/s handed out and recorded "
            f"({IMAGES:,} images, {SERVERS} fake servers in one other process); "
            "target >= 2,000"
        )
        print(
            f"        the runner's own CPU: {per_cpu_second:,.0f} images per CPU second "
            "(what one free core would hand out)"
        )
        for seconds in (1, 5, 30):
            print(f"        feeds {per_second * seconds:,.0f} servers at {seconds} s per image")
        peak, took = memory(work)
        print(
            f"memory: {peak} MB peak RSS for a ledger of {LEDGER_ROWS:,} images and the "
            f"scheduler over it (built in {took:.0f} s); target <= 300"
        )
    print(
        f"load average at end: {os.getloadavg()}; runner's own peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB"
    )


if __name__ == "__main__":
    main()
