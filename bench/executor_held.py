"""Valid browser-like POST /prompt, core vs this package, with ComfyUI's executor running
the prompts as they come and with it held idle.

Run: python bench/executor_held.py [--rounds 15]    (about 90 s; needs a ComfyUI, see README)

Two servers as in bridge_overhead.py (same pinning, same alternating requests and route),
both with a hold pack written to a temp dir at run time: its node blocks ComfyUI's executor
thread in `threading.Event.wait` (the GIL free) until a POST releases it. Each round
measures the route twice, in alternating order: once with a hold prompt running on both
servers (the valid prompts only queue up, and are run after the round), once as
bridge_overhead.py does (each prompt runs on the executor at once, which takes turns on the
GIL with the handler). The first shows what the request path costs alone; the difference
between the two is the executor's share. The running leg's request times are then split
by whether the request before went to the same server (its executor still runs that
prompt: the handler and the executor take turns on the GIL) or to the other.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bridge_overhead import drain, header, pin, rates, routes, write_pack  # noqa: E402

from comfy_clientid_bridge.tools.launcher import (  # noqa: E402
    REPO,
    Comfy,
    Tab,
    find_comfyui,
    running_comfyui,
)

HOLD_PACK = '''
"""Benchmark-only pack: a node that holds the executor until POST /cib_bench/release."""
import threading

from aiohttp import web
from server import PromptServer

GATE = threading.Event()


class CibBenchHold:
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "hold"
    CATEGORY = "bench"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"token": ("STRING", {"default": ""})}}

    def hold(self, token):
        GATE.wait(120)
        GATE.clear()
        return {}


@PromptServer.instance.routes.post("/cib_bench/release")
async def release(request):
    GATE.set()
    return web.json_response({})


NODE_CLASS_MAPPINGS = {"CibBenchHold": CibBenchHold}
'''


async def hold(session: aiohttp.ClientSession, comfy: Comfy) -> None:
    """Queues a hold prompt and waits until the executor runs it."""
    graph = {"1": {"class_type": "CibBenchHold", "inputs": {"token": uuid.uuid4().hex}}}
    async with session.post(f"{comfy.url}/api/prompt", json={"prompt": graph}) as answer:
        if answer.status != 200:
            raise RuntimeError(f"hold prompt refused: {await answer.text()}")
    for _ in range(500):
        async with session.get(f"{comfy.url}/api/queue") as answer:
            if (await answer.json())["queue_running"]:
                return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the hold prompt never ran on {comfy.url}")


async def release(session: aiohttp.ClientSession, comfy: Comfy) -> None:
    async with session.post(f"{comfy.url}/cib_bench/release") as answer:
        await answer.read()


async def measure(servers: list[Comfy], rounds: int) -> None:
    route = next(r for r in routes(1.0) if r.name == "POST /api/prompt valid, browser")
    ratios: dict[bool, list[float]] = {True: [], False: []}
    rates_of: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    requests: list[tuple[int, bool, float]] = []  # the running leg's, one by one
    async with aiohttp.ClientSession() as session:
        tabs = [await Tab(session, comfy.url, f"held{i}").open() for i, comfy in enumerate(servers)]
        listeners = [asyncio.create_task(tab.listen()) for tab in tabs]
        sides = [(comfy, tab.client_id) for comfy, tab in zip(servers, tabs, strict=True)]
        await rates(session, sides, replace(route, count=20))  # warm-up
        for comfy in servers:
            await drain(session, comfy)
        for number in range(rounds):
            for held in (True, False) if number % 2 == 0 else (False, True):
                if held:
                    for comfy in servers:
                        await hold(session, comfy)
                core, package = await rates(session, sides, route, None if held else requests)
                if held:
                    for comfy in servers:
                        await release(session, comfy)
                for comfy in servers:
                    await drain(session, comfy)
                ratios[held].append(package / core)
                rates_of[held].append((core, package))
        for tab in tabs:
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)
    print(f"\n{route.name}, {route.count} requests per server per measurement, {rounds} rounds")
    print("executor                   core/s  package/s  ratio      [q1   q3]")
    for held in (True, False):
        q1, _, q3 = statistics.quantiles(ratios[held], n=4)
        core = statistics.median(r[0] for r in rates_of[held])
        package = statistics.median(r[1] for r in rates_of[held])
        label = "held idle" if held else "running each prompt"
        print(
            f"{label:24s} {core:8.0f} {package:10.0f}  {statistics.median(ratios[held]):.3f}"
            f"  [{q1:.3f} {q3:.3f}]"
        )
    print_turns(requests)


def print_turns(requests: list[tuple[int, bool, float]]) -> None:
    """The running leg's request times, split by whether the request before went to the
    same server (whose executor then still runs that prompt: the two threads take turns on
    the GIL) or to the other one (whose executor competes for the CPU, not for the GIL)."""
    print("\nrunning leg, ms per request       mean    p10    p50    p90   n")
    for same in (False, True):
        for index, label in ((0, "core"), (1, "package")):
            times = [
                1000 * took for side, after, took in requests if side == index and after == same
            ]
            if len(times) < 10:
                continue
            deciles = statistics.quantiles(times, n=10)
            after = "after itself" if same else "after other "
            print(
                f"  {label:8s} {after}     {statistics.mean(times):6.2f} {deciles[0]:6.2f}"
                f" {statistics.median(times):6.2f} {deciles[8]:6.2f}  {len(times)}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    found = find_comfyui()
    if isinstance(found, str):
        print(f"executor_held: {found}")
        return 2
    header("executor_held")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cib-held-") as work, ExitStack() as stack:
        pack = write_pack(Path(work), "cib_bench_hold", HOLD_PACK)
        servers = [
            stack.enter_context(running_comfyui(Path(work) / label, packs=packs))
            for label, packs in (("core", [pack]), ("package", [REPO, pack]))
        ]
        print(
            f"core: {servers[0].url} (hold pack only); package: {servers[1].url} (+ this package)"
        )
        print(pin([comfy.process.pid for comfy in servers]))
        asyncio.run(measure(servers, options.rounds))
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
