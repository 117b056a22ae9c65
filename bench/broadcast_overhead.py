"""What the broadcast router adds to each message ComfyUI sends, in ns per call (median).

Run: python bench/broadcast_overhead.py

The wrapper sits on every `send_sync` (a `progress` message at each sampler step). It is
measured side by side with the bare call, on ComfyUI's executor thread and on another
thread, for the paths a message can take: a sid given (core's own events), a node-code
broadcast routed to the running tab, the server's `status`, and any thread but the
executor. The router reads the running prompt the way the installed package does
(internals.running_client_id over a PromptServer-shaped stand-in). Target: at most
2,000 ns added at the median on every path.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_clientid_bridge import internals  # noqa: E402
from comfy_clientid_bridge.routing.broadcasts import (  # noqa: E402
    BroadcastRouter,
    routing_send_sync,
)

CALLS = 20_000
ROUNDS = 15
TAB = "a" * 32
TARGET_NS = 2_000


def fake_server() -> Any:
    """PromptServer's shape as the router reads it: one running item, one open socket."""
    running = {1: (0, "pid", {}, {"client_id": TAB}, [])}
    return SimpleNamespace(
        prompt_queue=SimpleNamespace(currently_running=running),
        sockets={TAB: object()},
        client_id=TAB,
    )


def per_call_ns(call: Any, event: Any, sid: Any) -> float:
    start = time.perf_counter_ns()
    for _ in range(CALLS):
        call(event, None, sid)
    return (time.perf_counter_ns() - start) / CALLS


def measure(thread_name: str) -> dict[str, tuple[float, float]]:
    server = fake_server()
    router = BroadcastRouter(
        running_client=lambda: internals.running_client_id(server),
        is_connected=lambda client_id: internals.is_connected(server, client_id),
        on_worker_thread=internals.on_worker_thread,
    )

    def bare(event: Any, data: Any, sid: Any = None) -> None:
        return None

    wrapped = routing_send_sync(bare, router)
    cases = {"sid given": ("progress", TAB), "node broadcast": ("executed", None)}
    cases["server status"] = ("status", None)
    results: dict[str, tuple[float, float]] = {}

    def run() -> None:
        for name, (event, sid) in cases.items():
            bare_ns, wrapped_ns = [], []
            for _ in range(ROUNDS):  # interleaved, so drift hits both alike
                bare_ns.append(per_call_ns(bare, event, sid))
                wrapped_ns.append(per_call_ns(wrapped, event, sid))
            results[name] = (statistics.median(bare_ns), statistics.median(wrapped_ns))

    thread = threading.Thread(target=run, name=thread_name)
    thread.start()
    thread.join()
    return results


def main() -> int:
    worst = 0.0
    print(f"{'thread':<28}{'path':<18}{'bare ns':>10}{'wrapped ns':>12}{'added ns':>10}")
    for thread_name in ("Thread-1 (prompt_worker)", "Thread-9 (monitor)"):
        for path, (bare_ns, wrapped_ns) in measure(thread_name).items():
            added = wrapped_ns - bare_ns
            worst = max(worst, added)
            print(f"{thread_name:<28}{path:<18}{bare_ns:>10.0f}{wrapped_ns:>12.0f}{added:>10.0f}")
    verdict = "ok" if worst <= TARGET_NS else "OVER TARGET"
    print(f"worst added: {worst:.0f} ns per message (target <= {TARGET_NS} ns): {verdict}")
    return 0 if worst <= TARGET_NS else 1


if __name__ == "__main__":
    sys.exit(main())
