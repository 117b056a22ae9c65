"""What tying threads and pool tasks to their prompt adds per thread start and task, in µs.

Run: python bench/thread_ties.py

The wrappers sit on every `threading.Thread.start` and `ThreadPoolExecutor.submit` of the
process (routing/thread_origin.py). Measured side by side with the unwrapped methods, in
alternating rounds: a no-op thread started and joined, and `submit(noop).result()` on a
one-thread pool, on three threads: a thread outside any prompt (ComfyUI's own, the server's
loop: the wrapper only looks), ComfyUI's executor while a prompt runs (the origin is read
from a PromptServer-shaped stand-in, as the installed package reads it, and the tie is
made), and a thread that acts for a prompt (it passes its origin on). Target: at most
2 µs added per start or submission, on every path (the least of 15 rounds each way).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_clientid_bridge import internals, register  # noqa: E402
from comfy_clientid_bridge.routing import thread_origin  # noqa: E402

STARTS = 300
TASKS = 3_000
ROUNDS = 15
WRAPPER_CALLS = 20_000
TARGET_US = 2.0
PLAIN_START = threading.Thread.start
PLAIN_SUBMIT = ThreadPoolExecutor.submit


def noop() -> None:
    pass


def fake_server() -> Any:
    """PromptServer's shape as the origin is read from it: one running item."""
    extra = {"client_id": "a" * 32, "extra_pnginfo": {"workflow": {}}}
    running = {1: (0, "pid", {"1": {"class_type": "X", "inputs": {}}}, extra, [])}
    return SimpleNamespace(prompt_queue=SimpleNamespace(currently_running=running))


def end_to_end_us(start: Callable[..., Any], submit: Callable[..., Any]) -> tuple[float, float]:
    """(µs per no-op thread started and joined, µs per submit(noop).result())."""
    threads = [threading.Thread(target=noop) for _ in range(STARTS)]
    began = time.perf_counter_ns()
    for thread in threads:
        start(thread)
        thread.join()
    per_start = (time.perf_counter_ns() - began) / STARTS / 1000
    with ThreadPoolExecutor(max_workers=1) as pool:
        PLAIN_SUBMIT(pool, noop).result()  # the pool's thread exists before the timing
        began = time.perf_counter_ns()
        for _ in range(TASKS):
            submit(pool, noop).result()
        per_task = (time.perf_counter_ns() - began) / TASKS / 1000
    return per_start, per_task


def stub_start(thread: threading.Thread) -> None:
    thread.run()  # what the new OS thread would run, on this one: no thread made


def stub_submit(pool: Any, fn: Callable[..., Any], /, *args: Any) -> None:
    fn(*args)  # what the pool's thread would run, on this one: no queue, no future


def wrapper_us(start: Callable[..., Any], submit: Callable[..., Any]) -> tuple[float, float]:
    """The same two operations with the OS thread, the pool's queue and the future taken
    out: what is left is the wrapper's own work, both where it starts and where it runs."""
    threads = [threading.Thread(target=noop) for _ in range(WRAPPER_CALLS)]
    began = time.perf_counter_ns()
    for thread in threads:
        start(thread)
    per_start = (time.perf_counter_ns() - began) / WRAPPER_CALLS / 1000
    began = time.perf_counter_ns()
    for _ in range(WRAPPER_CALLS):
        submit(None, noop)
    per_task = (time.perf_counter_ns() - began) / WRAPPER_CALLS / 1000
    return per_start, per_task


Results = dict[str, tuple[float, float]]


def measure() -> Results:
    """{operation: (plain µs, wrapped µs)}, the least of alternating rounds: on a shared
    machine other work only ever adds time to a round."""
    wrapped_start, wrapped_submit = threading.Thread.start, ThreadPoolExecutor.submit
    tied_stub_start = thread_origin._tied_start(stub_start)
    tied_stub_submit = thread_origin._tied_submit(stub_submit)
    names = ["thread start+join", "submit().result()", "wrapper per start", "wrapper per task"]
    plain: list[list[float]] = [[] for _ in names]
    wrapped: list[list[float]] = [[] for _ in names]
    for _ in range(ROUNDS):
        for into, start, submit, stub_pair in (
            (plain, PLAIN_START, PLAIN_SUBMIT, (stub_start, stub_submit)),
            (wrapped, wrapped_start, wrapped_submit, (tied_stub_start, tied_stub_submit)),
        ):
            figures = (*end_to_end_us(start, submit), *wrapper_us(*stub_pair))
            for samples, figure in zip(into, figures, strict=True):
                samples.append(figure)
    return {name: (min(p), min(w)) for name, p, w in zip(names, plain, wrapped, strict=True)}


def on_thread(name: str, origin: thread_origin.Origin | None) -> Results:
    result: list[Results] = []

    def run() -> None:
        if origin is not None:
            thread_origin._acting.origin = origin  # as a tied thread's run sets it
        result.append(measure())

    thread = threading.Thread(target=run, name=name)
    PLAIN_START(thread)  # the measuring thread itself is not tied
    thread.join()
    return result[0]


def main() -> int:
    server = fake_server()
    ties = thread_origin.ThreadTies(
        on_executor=internals.on_worker_thread,
        executing=register.ExecutingOrigin(server),
    )
    thread_origin.install(ties)
    origin = register.ExecutingOrigin(server)()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    cases = {
        "outside any prompt": on_thread("Thread-3", None),
        "executor, prompt running": on_thread("Thread-1 (prompt_worker)", None),
        "thread acting for a prompt": on_thread("Thread-4", origin),
    }
    print(
        f"{'thread':28} {'operation':20} {'plain µs':>9} {'wrapped':>9} {'added':>7} {'ratio':>6}"
    )
    worst = 0.0
    for thread, results in cases.items():
        for operation, (plain, wrapped) in results.items():
            added = wrapped - plain
            if operation.startswith("wrapper"):
                worst = max(worst, added)
            print(
                f"{thread:28} {operation:20} {plain:9.2f} {wrapped:9.2f} {added:7.2f}"
                f" {wrapped / plain:6.3f}"
            )
    print(f"ties made: {ties.status()}")
    verdict = "within" if worst <= TARGET_US else "OVER"
    print(
        f"wrapper's own work, worst case: {worst:.2f} µs per start or task"
        f" ({verdict} the {TARGET_US} µs target); the end-to-end rows carry the noise of"
        " making OS threads, a few µs either way between rounds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
