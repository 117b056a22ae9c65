"""Threads and pool tasks that node code starts act for the prompt that started them."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from comfy_clientid_bridge import internals
from comfy_clientid_bridge.batch.pipeline import SaveJob, SaveWorker
from comfy_clientid_bridge.routing import thread_origin
from comfy_clientid_bridge.routing.thread_origin import (
    MARKER,
    Origin,
    ThreadTies,
    acting_for,
    detached,
)

EXECUTOR = "Thread-1 (prompt_worker)"  # ComfyUI's executor thread, where node code runs


class Graph(dict[str, Any]):
    """A prompt's graph that a weak reference can watch."""


def origin(prompt_id: str, client_id: str | None = "tab-a") -> Origin:
    return Origin(prompt_id, client_id, Graph(), None)


P, Q = origin("P", "tab-a"), origin("Q", "tab-b")


@dataclass
class Executor:
    """What runs on ComfyUI's executor now, as ThreadTies reads it."""

    running: Origin | None = None


@pytest.fixture
def executor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Executor]:
    """The ties installed, over wrappers made afresh for this test from the methods as they
    were (a mutation tester changes the wrappers' code after the process wrapped them)."""
    running = Executor()
    ties = ThreadTies(on_executor=internals.on_worker_thread, executing=lambda: running.running)
    assert thread_origin.install(ties)
    plain_start = threading.Thread.start.__wrapped__  # type: ignore[attr-defined]
    plain_submit = ThreadPoolExecutor.submit.__wrapped__  # type: ignore[attr-defined]
    monkeypatch.setattr(threading.Thread, "start", thread_origin._tied_start(plain_start))
    monkeypatch.setattr(ThreadPoolExecutor, "submit", thread_origin._tied_submit(plain_submit))
    yield running


def ties() -> ThreadTies:
    installed = thread_origin.installed()
    assert installed is not None
    return installed


def on(name: str, call: Callable[[], Any]) -> Any:
    """Runs `call` on a new thread with this name (the executor's, or another's)."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), name=name)
    thread.start()
    thread.join()
    return result[0]


def started_here(make: Callable[[Callable[[], None]], threading.Thread]) -> Origin | None:
    """Starts a thread made by `make` on the calling thread; what it acts for, seen inside."""
    seen: list[Origin | None] = []
    thread = make(lambda: seen.append(acting_for()))
    thread.start()
    thread.join()
    return seen[0]


class OwnRun(threading.Thread):
    def __init__(self, target: Callable[[], None]) -> None:
        super().__init__()
        self.call = target

    def run(self) -> None:
        self.call()


THREAD_KINDS: list[Callable[[Callable[[], None]], threading.Thread]] = [
    lambda target: threading.Thread(target=target),
    lambda target: threading.Timer(0, target),
    OwnRun,
]
KIND_IDS = ["thread", "timer", "subclass-run"]


@pytest.mark.parametrize("make", THREAD_KINDS, ids=KIND_IDS)
def test_a_thread_started_on_the_executor_acts_for_the_running_prompt(
    executor: Executor, make: Callable[[Callable[[], None]], threading.Thread]
) -> None:
    executor.running = P
    assert on(EXECUTOR, lambda: started_here(make)) is P


@pytest.mark.parametrize(
    ("starter", "running"),
    [(EXECUTOR, None), ("Thread-3", P), ("MainThread-like", P)],
    ids=["executor-between-prompts", "other-thread", "server-like-thread"],
)
def test_threads_started_outside_a_prompt_act_for_nobody(
    executor: Executor, starter: str, running: Origin | None
) -> None:
    executor.running = running
    assert on(starter, lambda: started_here(THREAD_KINDS[0])) is None


def test_a_thread_started_by_a_tied_thread_inherits_its_origin(executor: Executor) -> None:
    executor.running = P

    def nested() -> Origin | None:
        executor.running = Q  # another tab's prompt runs by the time the child starts
        return started_here(THREAD_KINDS[0])

    assert on(EXECUTOR, lambda: started_here_returning(nested)) is P


def started_here_returning(call: Callable[[], Any]) -> Any:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    thread.join()
    return result[0]


def test_a_timer_firing_while_another_prompt_runs_acts_for_its_own(executor: Executor) -> None:
    executor.running = P
    fire, seen = threading.Event(), []

    def start_timer() -> threading.Timer:
        timer = threading.Timer(0, lambda: (fire.wait(5), seen.append(acting_for())))
        timer.start()
        return timer

    timer = on(EXECUTOR, start_timer)
    executor.running = Q
    fire.set()
    timer.join()
    assert seen == [P]


def test_a_pool_thread_reused_by_two_prompts_acts_for_each_task_s_own(
    executor: Executor,
) -> None:
    def task() -> tuple[Origin | None, int]:
        return acting_for(), threading.get_ident()

    with ThreadPoolExecutor(max_workers=1) as pool:
        executor.running = P
        first = on(EXECUTOR, lambda: pool.submit(task).result())
        executor.running = Q
        second = on(EXECUTOR, lambda: pool.submit(task).result())
        outside = pool.submit(task).result()  # from this thread: no prompt's
    assert (first[0], second[0], outside[0]) == (P, Q, None)
    assert first[1] == second[1] == outside[1]  # one pool thread ran all three


def test_a_pool_task_submitted_by_a_tied_thread_acts_for_its_origin(executor: Executor) -> None:
    executor.running = P
    with ThreadPoolExecutor(max_workers=1) as pool:
        seen = on(
            EXECUTOR, lambda: started_here_returning(lambda: pool.submit(acting_for).result())
        )
        executor.running = None
        assert pool.submit(acting_for).result() is None
    assert seen is P


def test_run_in_executor_tasks_carry_the_submitter_s_origin(executor: Executor) -> None:
    import asyncio

    async def in_executor() -> Origin | None:
        return await asyncio.get_running_loop().run_in_executor(None, acting_for)

    executor.running = P
    assert on(EXECUTOR, lambda: asyncio.run(in_executor())) is P


def test_nothing_is_kept_once_a_thread_has_ended(executor: Executor) -> None:
    executor.running = origin("P-gone")
    watch = weakref.ref(executor.running.graph)
    thread = on(EXECUTOR, lambda: start_noop_thread())
    executor.running = None
    gc.collect()
    assert thread.is_alive() is False and "run" not in thread.__dict__
    assert watch() is None  # the Thread object node code keeps does not keep the origin
    assert not ties().acts_for("P-gone")


def start_noop_thread() -> threading.Thread:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    return thread


def test_nothing_is_kept_once_a_pool_task_has_run(executor: Executor) -> None:
    executor.running = origin("P-task")
    watch = weakref.ref(executor.running.graph)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = on(EXECUTOR, lambda: pool.submit(lambda: None))
        future.result()
        executor.running = None
        gc.collect()
        assert watch() is None  # the pool's thread lives on, the origin does not
    assert not ties().acts_for("P-task")


def test_a_thread_counts_as_acting_until_it_has_run(executor: Executor) -> None:
    executor.running = P
    timer = on(EXECUTOR, lambda: start_timer(60))
    assert ties().acts_for("P")
    timer.cancel()
    timer.join()
    gc.collect()
    assert not ties().acts_for("P")


def start_timer(delay: float) -> threading.Timer:
    timer = threading.Timer(delay, lambda: None)
    timer.start()
    return timer


def test_a_cancelled_task_stops_counting(executor: Executor) -> None:
    executor.running = P
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(release.wait, 5)
        queued = on(EXECUTOR, lambda: pool.submit(lambda: None))
        assert ties().acts_for("P")
        assert queued.cancel()
        release.set()
    gc.collect()
    assert not ties().acts_for("P")


def test_a_run_set_on_the_instance_is_kept_and_acts_for_the_prompt(executor: Executor) -> None:
    executor.running = P
    seen: list[Origin | None] = []

    def own_run() -> None:
        seen.append(acting_for())

    def start() -> threading.Thread:
        thread = threading.Thread()
        thread.run = own_run  # type: ignore[method-assign]
        thread.start()
        thread.join()
        return thread

    thread = on(EXECUTOR, start)
    assert seen == [P] and thread.__dict__["run"] is own_run


def test_a_start_that_fails_leaves_no_tie(executor: Executor) -> None:
    executor.running = P

    def start_twice() -> tuple[threading.Thread, str]:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()
        with pytest.raises(RuntimeError) as raised:
            thread.start()
        return thread, str(raised.value)

    thread, error = on(EXECUTOR, start_twice)
    gc.collect()
    assert "once" in error and "run" not in thread.__dict__
    assert not ties().acts_for("P")


def test_status_counts_tied_threads_and_tasks(executor: Executor) -> None:
    before = ties().status()
    executor.running = P
    with ThreadPoolExecutor(max_workers=1) as pool:
        on(EXECUTOR, lambda: (start_noop_thread(), pool.submit(lambda: None).result()))
        pool.submit(lambda: None).result()  # outside: not counted
    start_noop_thread()  # outside: not counted
    gc.collect()
    after = ties().status()
    assert after["tied_threads"] - before["tied_threads"] == 1
    assert after["tied_tasks"] - before["tied_tasks"] == 1
    assert after["acting_now"] == 0


def test_status_counts_what_acts_now(executor: Executor) -> None:
    executor.running = P
    timers = on(EXECUTOR, lambda: [start_timer(60), start_timer(60)])
    assert ties().status()["acting_now"] == 2
    for timer in timers:
        timer.cancel()
        timer.join()
    gc.collect()
    assert ties().status()["acting_now"] == 0


def test_installing_again_wraps_once(executor: Executor) -> None:
    start, submit = threading.Thread.start, ThreadPoolExecutor.submit
    assert getattr(start.__wrapped__, MARKER, False) is False  # type: ignore[attr-defined]
    again = ThreadTies(on_executor=lambda: False, executing=lambda: None)
    assert thread_origin.install(again) and thread_origin.installed() is again
    assert (threading.Thread.start, ThreadPoolExecutor.submit) == (start, submit)
    assert getattr(start, MARKER) and getattr(submit, MARKER)


def test_another_copy_of_the_package_leaves_the_wrappers_to_the_first(
    executor: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(thread_origin, "_wrapped_here", False)  # as a second copy sees it
    first = thread_origin.installed()
    start = threading.Thread.start
    assert thread_origin.install(ThreadTies(on_executor=bool, executing=lambda: None)) is False
    assert thread_origin.installed() is first and threading.Thread.start is start


def test_without_ties_every_thread_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thread_origin, "_ties", None)
    assert on(EXECUTOR, lambda: started_here(THREAD_KINDS[0])) is None
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert on(EXECUTOR, lambda: pool.submit(acting_for).result()) is None


def test_the_origin_never_prints_the_graph() -> None:
    shown = repr(Origin("P", "tab", {"1": {"inputs": {"text": "secret prompt"}}}, {"w": 1}))
    assert shown == "Origin(prompt_id='P', client_id='tab')"


def test_two_ties_to_one_prompt_count_until_both_have_run(executor: Executor) -> None:
    executor.running = P
    before = ties().status()["tied_threads"]
    first, second = on(EXECUTOR, lambda: [start_timer(60), start_timer(60)])
    assert ties().status()["tied_threads"] == before + 2
    first.cancel()
    first.join()
    gc.collect()
    assert ties().acts_for("P") and ties().status()["acting_now"] == 1
    second.cancel()
    second.join()
    gc.collect()
    assert not ties().acts_for("P")


def test_a_new_ties_counts_nothing_yet() -> None:
    fresh = ThreadTies(on_executor=lambda: False, executing=lambda: None)
    assert fresh.status() == {"tied_threads": 0, "tied_tasks": 0, "acting_now": 0}


@pytest.mark.parametrize(
    "mark", [thread_origin.EXECUTOR, thread_origin.NOBODY, thread_origin.UNTIED, None]
)
def test_a_thread_s_mark_is_no_origin(mark: Any) -> None:
    def read() -> Origin | None:
        thread_origin._acting.origin = mark
        return acting_for()

    assert on("Thread-3", read) is None
    assert repr(mark) == ("None" if mark is None else mark.name)


def test_a_task_run_inline_hands_the_thread_its_own_origin_back(executor: Executor) -> None:
    def run_inline() -> tuple[Origin | None, Origin | None]:
        thread_origin._acting.origin = Q  # a thread acting for Q runs P's task itself
        task = thread_origin._Acting(acting_for, P, ties(), "tasks")
        return task(), acting_for()

    assert on("Thread-3", run_inline) == (P, Q)


def test_a_task_gets_its_arguments(executor: Executor) -> None:
    executor.running = P
    with ThreadPoolExecutor(max_workers=1) as pool:
        task = pool.submit(lambda a, b=0: (acting_for(), a, b), 1, b=2)
        assert on(
            EXECUTOR, lambda: pool.submit(lambda a, b=0: (acting_for(), a, b), 1, b=2).result()
        ) == (P, 1, 2)
        assert task.result() == (None, 1, 2)


FRESH_PROCESS = """
import threading
from concurrent.futures import ThreadPoolExecutor
from comfy_clientid_bridge.routing import thread_origin as t
plain_start, plain_submit = threading.Thread.start, ThreadPoolExecutor.submit
origin = t.Origin("P", "tab", {})
made = [t.ThreadTies(on_executor=lambda: threading.current_thread().name == "executor",
                     executing=lambda: origin) for _ in range(2)]
installed = [t.install(ties) for ties in made]
seen = []
def node_code():
    thread = threading.Thread(target=lambda: seen.append(t.acting_for()))
    thread.start()
    thread.join()
    with ThreadPoolExecutor(max_workers=1) as pool:
        seen.append(pool.submit(t.acting_for).result())
executor = threading.Thread(target=node_code, name="executor")
executor.start()
executor.join()
print(installed, threading.Thread.start.__wrapped__ is plain_start,
      ThreadPoolExecutor.submit.__wrapped__ is plain_submit, t.installed() is made[1],
      made[1].status()["tied_threads"], made[1].status()["tied_tasks"], seen == [origin] * 2)
"""


def test_a_fresh_process_wraps_both_methods_once() -> None:
    """In a process of its own: the first install wraps, the second only swaps the ties."""
    # Here too, so that a mutation tester that maps tests to the functions they call in
    # process (mutmut) runs this test for the wrapping code.
    thread_origin.install(ThreadTies(on_executor=lambda: False, executing=lambda: None))
    root = Path(thread_origin.__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], cwd=root, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[True,", "True]", "True", "True", "True", "1", "1", "True"]


def test_threads_and_tasks_started_detached_act_for_nobody(executor: Executor) -> None:
    executor.running = P

    def inside_and_after() -> tuple[Origin | None, Origin | None, Origin | None]:
        with ThreadPoolExecutor(max_workers=1) as pool, detached():
            thread = started_here(THREAD_KINDS[0])
            task = pool.submit(acting_for).result()
        return thread, task, started_here(THREAD_KINDS[0])

    assert on(EXECUTOR, inside_and_after) == (None, None, P)


def test_the_save_worker_started_during_a_prompt_acts_for_no_prompt(executor: Executor) -> None:
    executor.running = P
    worker, seen = SaveWorker(), []
    job = SaveJob("batch", (), lambda: seen.append(acting_for()))
    assert on(EXECUTOR, lambda: worker.submit(job, stopped=lambda: False))
    assert worker.wait(timeout=10)
    assert seen == [None]
