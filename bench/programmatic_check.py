"""Cost of the programmatic check: lookup per /prompt request, and the audit hook per event.

Run: python bench/programmatic_check.py
Prints the median lookup time with 50 open connections from another process to the server
port (as 50 browser tabs' websockets would be) and 0, 1 or 8 of this process's own, and the
audit hook's cost per audited event as a ratio against a process without it.
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

EVENTS = """
import sys, time
if sys.argv[1] == "hooked":
    sys.path.insert(0, sys.argv[2])
    from comfy_clientid_bridge.routing.self_connections import SELF_CONNECTIONS
    SELF_CONNECTIONS.watch_port(8188)
n = 1_000_000
start = time.perf_counter()
for _ in range(n):
    sys.audit("bench.event")
print((time.perf_counter() - start) / n * 1e9)
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


def hook_cost() -> None:
    repo = str(Path(__file__).resolve().parents[1])
    times = {}
    for variant in ("plain", "hooked"):
        runs = [
            float(subprocess.check_output([sys.executable, "-c", EVENTS, variant, repo], text=True))
            for _ in range(3)
        ]
        times[variant] = min(runs)
    extra = times["hooked"] - times["plain"]
    print(
        f"audit event: {times['plain']:.0f} ns without the hook, {times['hooked']:.0f} ns with it "
        f"(+{extra:.0f} ns per audited event, ratio {times['hooked'] / times['plain']:.2f})"
    )


if __name__ == "__main__":
    print(f"python {sys.version.split()[0]} on {sys.platform}")
    lookup_costs()
    hook_cost()
