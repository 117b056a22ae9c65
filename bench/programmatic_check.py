"""Cost of the programmatic check: lookup per /prompt request, and what watching costs the process.

Run: python bench/programmatic_check.py
Prints the median lookup time with 50 open connections from another process to the server
port (as 50 browser tabs' websockets would be) and 0, 1 or 8 of this process's own; then,
in fresh processes with and without the registry watching a port, the time of what the
rest of ComfyUI does: `copy.deepcopy` of a queue item carrying a browser's workflow (core
copies each prompt as it runs it) and one loopback connect (the only call we wrap). The
ratio with/without is the process-wide cost; an audit hook, the previous design, made the
deepcopy 2x slower (it is called for every `id()`).
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_clientid_bridge.routing.self_connections import SelfConnections  # noqa: E402

TABS = 50
REPEATS = 20_000

OUTSIDE = """
import socket, sys, time
socks = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(int(sys.argv[2]))]
print("ready", flush=True)
sys.stdin.read()
"""

PROCESS = """
import copy, socket, sys, time
if sys.argv[1] == "watching":
    sys.path.insert(0, sys.argv[2])
    from comfy_clientid_bridge.routing.self_connections import SELF_CONNECTIONS
    SELF_CONNECTIONS.watch_port(8188)
nodes = [{"id": i, "type": "KSampler", "pos": [i, 2 * i], "size": [300, 200], "flags": {},
          "inputs": [{"name": "model", "link": i}], "outputs": [{"name": "LATENT", "links": [i]}],
          "widgets_values": [i, "fixed", 20, 8.0, "euler", "normal", 1.0]} for i in range(40)]
graph = {str(i): {"class_type": "KSampler", "inputs": {"seed": i, "model": [str(i + 1), 0]}}
         for i in range(40)}
item = (1, "id", graph, {"client_id": "tab", "extra_pnginfo": {"workflow": {"nodes": nodes}}}, ["1"])
def best(function, n):
    runs = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(n):
            function()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return min(runs)
listener = socket.create_server(("127.0.0.1", 0))
def connect():
    socket.create_connection(listener.getsockname()).close()
    listener.accept()[0].close()
print(best(lambda: copy.deepcopy(item), 300), best(connect, 300))
"""


def median_us(registry: SelfConnections, peer: object, here: object) -> float:
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        registry.lookup(peer, here)
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def lookup_costs() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    port = listener.getsockname()[1]
    outside = subprocess.Popen(
        [sys.executable, "-c", OUTSIDE, str(port), str(TABS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert outside.stdout is not None and outside.stdout.readline().strip() == "ready"
    tabs = [listener.accept()[0] for _ in range(TABS)]
    registry = SelfConnections()
    registry.watch_port(port)
    own: list[tuple[socket.socket, socket.socket]] = []
    print(f"lookup, {TABS} open connections from another process (median of {REPEATS}):")
    for count in (0, 1, 8, 64, 200):
        while len(own) < count:
            client = socket.create_connection(("127.0.0.1", port))
            own.append((client, listener.accept()[0]))
        browser = median_us(registry, tabs[0].getpeername(), tabs[0].getsockname())
        line = f"  {count} own connection(s): browser request {browser:.2f} us"
        if own:
            node = median_us(registry, own[-1][1].getpeername(), own[-1][1].getsockname())
            line += f", node-code request {node:.2f} us"
        print(line + "  (target <= 100 us)")
    outside.communicate("")
    for sock in tabs + [s for pair in own for s in pair] + [listener]:
        sock.close()


def process_cost() -> None:
    repo = str(Path(__file__).resolve().parents[1])
    times: dict[str, list[float]] = {}
    for variant in ("plain", "watching", "plain", "watching", "plain", "watching"):
        out = subprocess.check_output([sys.executable, "-c", PROCESS, variant, repo], text=True)
        runs = [float(value) for value in out.split()]
        best = times.setdefault(variant, runs)
        times[variant] = [min(a, b) for a, b in zip(best, runs, strict=True)]
    (copy_plain, connect_plain), (copy_watching, connect_watching) = (
        times["plain"],
        times["watching"],
    )
    print(
        f"deepcopy of a queue item with a 40-node workflow: {copy_plain:.1f} us without, "
        f"{copy_watching:.1f} us watching (ratio {copy_watching / copy_plain:.2f}; target <= 1.05)"
    )
    print(
        f"loopback connect + close: {connect_plain:.1f} us without, {connect_watching:.1f} us "
        f"watching (+{connect_watching - connect_plain:.1f} us)"
    )


if __name__ == "__main__":
    print(f"python {sys.version.split()[0]} on {sys.platform}")
    lookup_costs()
    process_cost()
