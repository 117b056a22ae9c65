"""What the bridge costs a real ComfyUI: request rates with and without it, and its check.

Run: python bench/bridge_overhead.py [--rounds 21] [--scale 1.0]    (about 100 s)
     python bench/bridge_overhead.py --baseline-env COMFY_CLIENTID_BRIDGE_GUARD=0 --only browser
       (the baseline server runs this package too, with the request guard off: the ratio is
       then the guard's own cost; --only keeps the routes whose name contains the text and
       skips part 2)
     python bench/bridge_overhead.py --floor --only browser
       (the measured server runs a pack of one no-op middleware instead: what any /prompt
       middleware costs on this machine, the floor under this package's ratio)
     python bench/bridge_overhead.py --only "valid, browser" --no-pin
       (nothing pinned: each server's handler and executor threads may run on different
       CPUs, as on a server machine; noisier)
     python bench/bridge_overhead.py --only "valid, browser" --slice-us 3000
       (diagnostic: every server thread's kernel scheduler slice set, default 750 us on
       Linux >= 6.12; see docs/benchmarks.md)

1. Two ComfyUI servers run at once, one with this package and one with no custom node
   pack, each with its own temp folders. One client process drives both: per round and
   route, N sequential keep-alive requests to each, the two servers' requests alternating
   one by one (A B B A ...), so that noise on the machine hits both alike. The client is
   pinned to one CPU and both servers' threads to the other. Reported per route: the
   median over the rounds of each server's rate, and the median of the rounds' with/without
   ratios, next to the target; an A/A row (the server without packs against itself) shows
   the noise floor. POST /api/prompt is sent like a browser (Origin of the host, client_id
   of an open websocket) and like a script (neither), with a valid graph and with an
   unknown node (400). The valid graph (EmptyImage 8x8 -> PreviewImage) is really queued
   and runs (cached after the first run, so each run is short); after each such route both
   servers are waited on until every queued prompt has run.
   Next to the rates, each server's own CPU time per request (user + system of all its
   threads, /proc/<pid>/stat, from the round's first request until its queue ran empty):
   what a request costs the server, whichever thread spends it. The rate of a valid
   /prompt also depends on how the handler and the executor thread, which runs the prompt
   just queued, take turns on the GIL, which moves the rate without moving the CPU time.
2. A third server with this package and a probe pack written to a temp dir at run time:
   its routes time `SELF_CONNECTIONS.lookup` (the programmatic check the middleware makes
   for every POST /prompt) and the bridge's on-prompt handler, from inside the process,
   with 50 websockets open to the server, for browser requests and for node-code requests
   (made by the probe from a thread of the server process), with 0, 8 and 64 idle
   connections of the server process to its own port held open (a pack's keep-alives).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_clientid_bridge.tools.launcher import (  # noqa: E402
    REPO,
    Comfy,
    Tab,
    find_comfyui,
    running_comfyui,
)

WEBSOCKETS = 50
VALID = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}
INVALID = {"1": {"class_type": "CibBenchNoSuchNode", "inputs": {}}}

# --floor: the least any pack with a /prompt middleware costs. One middleware that does
# nothing, put first in the app's list the way this package puts its own.
NOOP_PACK = '''
"""Benchmark-only pack: one aiohttp middleware that passes every request on."""
from aiohttp import web
from server import PromptServer


@web.middleware
async def cib_bench_noop(request, handler):
    return await handler(request)


PromptServer.instance.app.middlewares.insert(0, cib_bench_noop)
NODE_CLASS_MAPPINGS = {}
'''

PROBE_PACK = '''
"""Benchmark-only pack: times the bridge's programmatic check and decision in this process."""
import asyncio
import http.client
import sys
import threading
import time
import urllib.error
import urllib.request

from aiohttp import web

import server

SAMPLES = {"lookup": [], "decide": []}
HELD = []  # connections of this process kept open, as a pack holding keep-alives would


def _module(suffix):
    for name, module in list(sys.modules.items()):
        if name.endswith(suffix):
            return module
    raise LookupError(suffix)


def _timed(function, kind):
    def timed(*args, **kwargs):
        start = time.perf_counter_ns()
        try:
            result = function(*args, **kwargs)
        finally:
            elapsed = time.perf_counter_ns() - start
        SAMPLES[kind].append((elapsed, result is not None if kind == "lookup" else True))
        return result

    return timed


routes = server.PromptServer.instance.routes


@routes.post("/cib_bench/install")
async def install(request):
    connections = _module("comfy_clientid_bridge.routing.self_connections").SELF_CONNECTIONS
    connections.lookup = _timed(connections.lookup, "lookup")
    handlers = server.PromptServer.instance.on_prompt_handlers
    for index, handler in enumerate(handlers):
        if type(getattr(handler, "__self__", None)).__name__ == "Bridge":
            handlers[index] = _timed(handler, "decide")
    return web.json_response({"ports": sorted(connections.ports)})


@routes.get("/cib_bench/samples")
async def samples(request):
    kind = request.query["kind"]
    taken, SAMPLES[kind] = SAMPLES[kind], []
    return web.json_response(taken)


def _hold(count):
    port = server.PromptServer.instance.port
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.connect()
        HELD.append(connection)


def _node_requests(count, body):
    port = server.PromptServer.instance.port
    for _ in range(count):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/prompt",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request, timeout=30).read()
        except urllib.error.HTTPError as error:
            error.read()


async def _in_thread(target, *args):
    thread = threading.Thread(target=target, args=args, name="cib-bench-node-code")
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.01)


@routes.post("/cib_bench/hold")
async def hold(request):
    await _in_thread(_hold, int(request.query["count"]))
    return web.json_response({"held": len(HELD)})


@routes.post("/cib_bench/node_requests")
async def node_requests(request):
    body = await request.read()
    await _in_thread(_node_requests, int(request.query["count"]), body)
    return web.json_response({"done": True})


NODE_CLASS_MAPPINGS = {}
'''


@dataclass(frozen=True)
class Route:
    name: str
    count: int
    target: float
    send: Callable[[aiohttp.ClientSession, Comfy, str], Awaitable[int]]
    expect: int
    queues: bool = False  # leaves prompts in the queue: clear it after the round


def prompt_sender(
    graph: dict[str, Any], *, browser: bool
) -> Callable[[aiohttp.ClientSession, Comfy, str], Awaitable[int]]:
    async def send(session: aiohttp.ClientSession, comfy: Comfy, client_id: str) -> int:
        body: dict[str, Any] = {"prompt": graph}
        headers = {}
        if browser:
            body["client_id"] = client_id
            headers["Origin"] = comfy.url
        async with session.post(f"{comfy.url}/api/prompt", json=body, headers=headers) as answer:
            await answer.read()
            return answer.status

    return send


def getter(path: str) -> Callable[[aiohttp.ClientSession, Comfy, str], Awaitable[int]]:
    async def send(session: aiohttp.ClientSession, comfy: Comfy, client_id: str) -> int:
        async with session.get(f"{comfy.url}{path}") as answer:
            await answer.read()
            return answer.status

    return send


def routes(scale: float) -> list[Route]:
    """Counts sized for about 0.2 s per measurement on a 2-core machine: short measurements
    in many rounds, so that a burst of noise spoils few of them."""

    def n(count: int) -> int:
        return max(10, int(count * scale))

    valid_browser = prompt_sender(VALID, browser=True)
    valid_script = prompt_sender(VALID, browser=False)
    invalid_browser = prompt_sender(INVALID, browser=True)
    invalid_script = prompt_sender(INVALID, browser=False)
    return [
        Route("GET /api/queue", n(1200), 0.98, getter("/api/queue"), 200),
        Route("GET / (index.html)", n(500), 0.98, getter("/"), 200),
        Route("POST /api/prompt valid, browser", n(200), 0.95, valid_browser, 200, True),
        Route("POST /api/prompt valid, script", n(200), 0.80, valid_script, 200, True),
        Route("POST /api/prompt 400, browser", n(600), 0.95, invalid_browser, 400),
        Route("POST /api/prompt 400, script", n(600), 0.80, invalid_script, 400),
    ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drain(session: aiohttp.ClientSession, comfy: Comfy, polls: int = 1200) -> None:
    """Waits until every queued prompt has run."""
    for _ in range(polls):
        async with session.get(f"{comfy.url}/api/queue") as answer:
            queue = await answer.json()
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{comfy.url} did not go idle")


async def settle(session: aiohttp.ClientSession, comfy: Comfy) -> None:
    """Empties the queue, cuts the running prompt and waits until nothing runs."""
    async with session.post(f"{comfy.url}/api/queue", json={"clear": True}) as answer:
        await answer.read()
    async with session.post(f"{comfy.url}/api/interrupt") as answer:
        await answer.read()
    await drain(session, comfy, polls=200)


Side = tuple[Comfy, str]  # a server and the client id of the tab open on it


async def rates(
    session: aiohttp.ClientSession,
    sides: list[Side],
    route: Route,
    log: list[tuple[int, bool, float]] | None = None,
) -> list[float]:
    """Requests per second of each side over `route.count` requests each, sent in
    alternation A B B A A B ... so that a burst of noise on the machine hits both sides
    alike and neither is always the one that comes back from idle. Each side's rate is
    its count over the sum of its own request times. `log`, if given, gets each request's
    (side, whether the request before it went to the same side, seconds)."""
    spent = [0.0 for _ in sides]
    previous = None
    for number in range(route.count):
        for index in (0, 1) if number % 2 == 0 else (1, 0):
            comfy, client_id = sides[index]
            start = time.perf_counter()
            status = await route.send(session, comfy, client_id)
            took = time.perf_counter() - start
            spent[index] += took
            if log is not None:
                log.append((index, previous == index, took))
            previous = index
            if status != route.expect:
                raise RuntimeError(f"{route.name} on {comfy.url}: {status}, not {route.expect}")
    return [route.count / seconds for seconds in spent]


async def throughput(servers: dict[str, Comfy], rounds: int, scale: float, only: str) -> None:
    table = [route for route in routes(scale) if only in route.name]
    control = replace(table[0], name=f"{table[0].name} A/A control*", target=0.98)
    samples: dict[str, list[tuple[float, float]]] = {route.name: [] for route in [*table, control]}
    cpu: dict[str, list[tuple[float, float]]] = {route.name: [] for route in table}
    async with aiohttp.ClientSession() as session:
        tabs = {
            label: await Tab(session, comfy.url, f"bench{label}").open()
            for label, comfy in servers.items()
        }
        listeners = [asyncio.create_task(tab.listen()) for tab in tabs.values()]
        without: Side = (servers["without"], tabs["without"].client_id)
        with_: Side = (servers["with"], tabs["with"].client_id)
        for route in table:  # warm-up: first requests load the frontend, caches, the graph
            await rates(session, [without, with_], replace(route, count=20))
            for comfy in servers.values():
                await settle(session, comfy)
        for _ in range(rounds):
            for route in table:
                before = [cpu_seconds(side[0].process.pid) for side in (without, with_)]
                rate_without, rate_with = await rates(session, [without, with_], route)
                samples[route.name].append((rate_without, rate_with))
                if route.queues:
                    for comfy in servers.values():
                        await drain(session, comfy)
                after = [cpu_seconds(side[0].process.pid) for side in (without, with_)]
                spent = [(b - a) / route.count for a, b in zip(before, after, strict=True)]
                cpu[route.name].append((spent[0], spent[1]))
            first, second = await rates(session, [without, without], control)
            samples[control.name].append((first, second))
            if control.queues:
                await drain(session, servers["without"])
        for tab in tabs.values():
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)
    print(
        f"\n1. requests per second, median of {rounds} rounds; requests to the two servers"
        " alternate one by one;\n   ratio = median of the rounds' with/without ratios,"
        " [q1 q3] their quartiles"
    )
    print(
        f"{'route':<36}{'N':>5}{'without':>9}{'with':>9}{'ratio':>7}{'[q1   q3]':>15}{'target':>9}"
    )
    for route in [*table, control]:
        pairs = samples[route.name]
        ratios = [with_rate / without_rate for without_rate, with_rate in pairs]
        ratio = statistics.median(ratios)
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        verdict = "ok" if ratio >= route.target else "BELOW"
        print(
            f"{route.name:<36}{route.count:>5}{statistics.median(p[0] for p in pairs):>9.0f}"
            f"{statistics.median(p[1] for p in pairs):>9.0f}{ratio:>7.3f}  [{q1:.3f} {q3:.3f}]"
            f"{'>= ' + format(route.target, '.2f'):>9}  {verdict}"
        )
    print("   * the server without packs against itself: the noise floor of this measurement")
    print(
        "\n   each server's own CPU time per request, median of the rounds (clock ticks of"
        f" {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms);\n   ratio = median of the rounds'"
        " without/with ratios (1.0: the same cost; 0.95: 5% more CPU with the package)"
    )
    print(f"{'route':<36}{'without us':>12}{'with us':>10}{'ratio':>7}{'[q1   q3]':>15}")
    for route in table:
        pairs = [(a, b) for a, b in cpu[route.name] if a > 0 and b > 0]
        if len(pairs) < 2:
            print(f"{route.name:<36}  too few ticks")
            continue
        ratios = [a / b for a, b in pairs]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(
            f"{route.name:<36}{statistics.median(p[0] for p in pairs) * 1e6:>12.0f}"
            f"{statistics.median(p[1] for p in pairs) * 1e6:>10.0f}"
            f"{statistics.median(ratios):>7.3f}  [{q1:.3f} {q3:.3f}]"
        )


def summary(taken: list[tuple[int, bool]], matched: bool, *, checked: bool) -> str:
    """Median and p95 in microseconds of the samples whose lookup found (or not) a match,
    with the verdict against the 100 us target when `checked`."""
    values = [ns for ns, match in taken if match is matched]
    if len(values) < 2:
        return "no samples"
    median, p95 = statistics.median(values) / 1000, statistics.quantiles(values, n=20)[-1] / 1000
    line = f"{median:7.2f} us median, p95 {p95:7.2f} us (n={len(values)})"
    if checked:
        line += f"   <= 100 us  {'ok' if median <= 100 else 'ABOVE'}"
    return line


class Probe:
    """The probe pack's routes on the server under test."""

    def __init__(self, session: aiohttp.ClientSession, comfy: Comfy) -> None:
        self.session, self.comfy = session, comfy

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.session.request(method, f"{self.comfy.url}{path}", **kwargs) as answer:
            if answer.status != 200:
                raise RuntimeError(f"{path}: {answer.status} {await answer.text()}")
            return await answer.json()

    async def samples(self, kind: str) -> list[tuple[int, bool]]:
        taken = await self.call("GET", "/cib_bench/samples", params={"kind": kind})
        return [(int(ns), bool(match)) for ns, match in taken]

    async def browser_requests(self, count: int, client_id: str) -> None:
        body = {"prompt": INVALID, "client_id": client_id}
        for _ in range(count):
            url = f"{self.comfy.url}/api/prompt"
            async with self.session.post(url, json=body, headers={"Origin": self.comfy.url}) as r:
                await r.read()

    async def node_requests(self, count: int) -> None:
        params = {"count": count}
        await self.call("POST", "/cib_bench/node_requests", params=params, json={"prompt": INVALID})


async def check_cost(comfy: Comfy, scale: float) -> None:
    browser_count, node_count = max(50, int(500 * scale)), max(50, int(300 * scale))
    rows: list[tuple[str, str]] = []
    async with aiohttp.ClientSession() as session:
        tabs = [await Tab(session, comfy.url, f"benchtab{i}").open() for i in range(WEBSOCKETS)]
        listeners = [asyncio.create_task(tab.listen()) for tab in tabs]
        probe = Probe(session, comfy)
        ports = (await probe.call("POST", "/cib_bench/install"))["ports"]
        held = 0
        for target in (0, 8, 64):  # the lookup walks every live socket of ours it tracks
            if target > held:
                await probe.call("POST", "/cib_bench/hold", params={"count": target - held})
                held = target
            await probe.browser_requests(browser_count, tabs[0].client_id)
            lookup, decide = await probe.samples("lookup"), await probe.samples("decide")
            rows.append((f"browser, {held} held", summary(lookup, False, checked=True)))
            rows.append(
                (
                    f"  (on-prompt handler, browser, {held} held)",
                    summary(decide, True, checked=False),
                )
            )
            await probe.node_requests(node_count)
            lookup, decide = await probe.samples("lookup"), await probe.samples("decide")
            rows.append((f"node code, {held} held", summary(lookup, True, checked=True)))
            rows.append(
                (
                    f"  (on-prompt decision, node code, {held} held)",
                    summary(decide, True, checked=False),
                )
            )
        for tab in tabs:
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)
    print(
        f"\n2. programmatic check per POST /prompt inside ComfyUI: SELF_CONNECTIONS.lookup timed "
        f"by a probe pack;\n   {WEBSOCKETS} websockets open from this process, port {ports}, "
        "'held' = idle connections the server process itself keeps open to its port"
    )
    print(f"{'request':<46}{'time':<45}target")
    for name, value in rows:
        print(f"{name:<46}{value}")


def pin(server_pids: list[int]) -> str:
    """Client on one CPU, every thread of both servers on another, so that the client never
    competes with the server it measures; the two servers take turns on theirs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "CPU pinning: off (one CPU)"
    client, servers = cpus[0], cpus[1]
    os.sched_setaffinity(0, {client})
    for tid in _threads(server_pids):
        os.sched_setaffinity(tid, {servers})
    return f"CPU pinning: client on CPU {client}, all threads of both servers on CPU {servers}"


def _threads(server_pids: list[int]) -> list[int]:
    return [int(task.name) for pid in server_pids for task in Path(f"/proc/{pid}/task").iterdir()]


# struct sched_attr, SCHED_ATTR_SIZE_VER0 (include/uapi/linux/sched/types.h): size, policy,
# flags, nice, priority, runtime, deadline, period.
_SCHED_ATTR = "IIQiIQQQ"
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}


def set_slice(server_pids: list[int], microseconds: int) -> str:
    """--slice-us: every server thread's scheduler slice (SCHED_OTHER with sched_runtime,
    Linux >= 6.12 EEVDF; the default is 0.75 ms). A diagnostic, not a setting to ship:
    how the rate ratio moves with the slice shows whether a difference comes from where
    the kernel preempts the handler rather than from CPU time spent."""
    number = _SYS_SCHED_SETATTR.get(platform.machine())
    if number is None or platform.system() != "Linux":
        raise SystemExit(f"--slice-us: sched_setattr is not known here ({platform.machine()})")
    libc = ctypes.CDLL(None, use_errno=True)
    attr = struct.pack(_SCHED_ATTR, struct.calcsize(_SCHED_ATTR), 0, 0, 0, 0,
                       microseconds * 1000, 0, 0)  # fmt: skip
    threads = _threads(server_pids)
    for tid in threads:
        if libc.syscall(number, tid, ctypes.create_string_buffer(attr), 0) != 0:
            error = ctypes.get_errno()
            raise SystemExit(f"--slice-us: sched_setattr failed: {os.strerror(error)}")
    return f"scheduler slice: {microseconds} us on all {len(threads)} threads of both servers"


def write_pack(base: Path, name: str, source: str) -> Path:
    """A benchmark-only custom node pack, written under `base` at run time."""
    pack = base / "packs" / name
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(source)
    return pack


def header(name: str = "bridge_overhead") -> None:
    found = find_comfyui()
    assert not isinstance(found, str)
    checkout, python = found
    version = (checkout / "comfyui_version.py").read_text().split('"')[1]
    print(f"{name}  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(
        f"machine: nproc={os.cpu_count()} {platform.machine()} {platform.system()} "
        f"{platform.release()}; client Python {platform.python_version()}; "
        f"ComfyUI {version} ({python})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies request counts")
    parser.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="the baseline server runs this package too, with these environment variables",
    )
    parser.add_argument(
        "--with-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="the measured server runs this package with these environment variables",
    )
    parser.add_argument("--only", default="", help="only the routes whose name contains this")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="'with' runs a pack of one no-op middleware instead of this package: the cost "
        "of any /prompt middleware, this machine's floor for the ratio (skips part 2)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="pin nothing: the servers' threads may use every CPU, as on a server machine "
        "(noisier; the default pinning puts both servers on one CPU)",
    )
    parser.add_argument(
        "--slice-us",
        type=int,
        default=0,
        help="diagnostic: set every server thread's scheduler slice (Linux >= 6.12)",
    )
    options = parser.parse_args()
    if options.floor and options.with_env:
        parser.error("--floor measures a no-op pack, not this package: no --with-env with it")
    baseline_env = dict(item.split("=", 1) for item in options.baseline_env)
    with_env = dict(item.split("=", 1) for item in options.with_env) or None
    found = find_comfyui()
    if isinstance(found, str):
        print(f"bridge_overhead: {found}")
        return 2
    header()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cib-bench-") as work:
        base = Path(work)
        with ExitStack() as stack:
            servers: dict[str, Comfy] = {}
            baseline = ([REPO], baseline_env) if baseline_env else ([], None)
            measured = [write_pack(base, "cib_bench_noop", NOOP_PACK) if options.floor else REPO]
            for label, (packs, env) in (("without", baseline), ("with", (measured, with_env))):
                root = base / label
                servers[label] = stack.enter_context(running_comfyui(root, packs=packs, env=env))
            print(f"servers up in {time.monotonic() - started:.0f} s:")
            what = f"this package with {baseline_env}" if baseline_env else "no custom node pack"
            print(f"  without: {servers['without'].url} ({what})")
            what = "a no-op middleware pack" if options.floor else "this package"
            what += f" with {with_env}" if with_env else ""
            print(f"  with:    {servers['with'].url} ({what})")
            pids = [comfy.process.pid for comfy in servers.values()]
            print(f"  {'CPU pinning: off (--no-pin)' if options.no_pin else pin(pids)}")
            if options.slice_us:
                print(f"  {set_slice(pids, options.slice_us)}")
            asyncio.run(throughput(servers, options.rounds, options.scale, options.only))
        if options.only or options.floor:
            print(f"\ntotal {time.monotonic() - started:.0f} s")
            return 0
        probe = write_pack(base, "cib_bench_probe", PROBE_PACK)
        root = base / "probe"
        with running_comfyui(root, packs=[REPO, probe]) as comfy:
            asyncio.run(check_cost(comfy, options.scale))
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
