"""The save worker and the prefetcher on their own: order, bounds, failures, stops."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from comfy_clientid_bridge import internals
from comfy_clientid_bridge.batch import pipeline as pipeline_module
from comfy_clientid_bridge.batch.pending_views import pending_view_middleware
from comfy_clientid_bridge.batch.pipeline import Prefetcher, SaveJob, SaveWorker

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
WAIT = 10.0  # seconds a test waits for a background thread at most: a hang fails, not stalls
LONG_HOLD = 3 * WAIT  # a save held this long: what ends the hold sooner is what a test checks


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Holds a job in the worker until set; set at the end so no thread is left waiting."""
    event = threading.Event()
    yield event
    event.set()


def job(batch: str, done: list[str], name: str, *, gate: threading.Event | None = None) -> SaveJob:
    def work() -> None:
        if gate is not None:
            assert gate.wait(WAIT)
        done.append(name)

    return SaveJob(batch, (Path(f"/out/{name}.png"),), work)


def failing(batch: str, message: str) -> SaveJob:
    def work() -> None:
        raise OSError(28, message)

    return SaveJob(batch, (), work)


def never_stopped() -> bool:
    return False


# --- the save worker ---------------------------------------------------------------------


def test_jobs_run_in_the_order_given(gate: threading.Event) -> None:
    worker, done = SaveWorker(depth=5), []
    worker.submit(job("a", done, "1", gate=gate), never_stopped)
    for name in ("2", "3", "4"):
        worker.submit(job("a", done, name), never_stopped)
    gate.set()
    assert worker.wait(timeout=WAIT)
    assert done == ["1", "2", "3", "4"]


@pytest.mark.parametrize("depth", [1, 2, 3], ids=["depth-1", "depth-2", "depth-3"])
def test_a_submit_waits_while_depth_jobs_are_in_flight(gate: threading.Event, depth: int) -> None:
    """The (depth + 1)th submit asks whether to give up (it waits) and is taken only once
    the first job ended; never more than `depth` in flight."""
    worker, done = SaveWorker(depth=depth), []
    worker.submit(job("a", done, "0", gate=gate), never_stopped)
    for number in range(1, depth):
        assert worker.submit(job("a", done, str(number)), never_stopped)
    seen_in_flight: list[int] = []

    def stopped() -> bool:
        seen_in_flight.append(worker.in_flight())
        gate.set()  # the disk catches up while the saver waits
        return False

    assert worker.submit(job("a", done, "last"), stopped)
    assert seen_in_flight and seen_in_flight[0] == depth
    assert worker.wait(timeout=WAIT)
    assert done == [*map(str, range(depth)), "last"]


def test_a_submit_gives_up_when_its_batch_is_stopped_while_waiting(gate: threading.Event) -> None:
    worker, done = SaveWorker(depth=1), []
    worker.submit(job("a", done, "first", gate=gate), never_stopped)
    assert not worker.submit(job("a", done, "second"), lambda: True)
    gate.set()
    assert worker.wait(timeout=WAIT)
    assert done == ["first"]  # handed over before the stop: finished; the other never was


def test_a_stop_while_waiting_is_noticed_without_any_save_ending(gate: threading.Event) -> None:
    """The saver looks at its batch while it waits, not only when the worker makes room."""
    worker, done = SaveWorker(depth=1), []
    worker.submit(job("a", done, "first", gate=gate), never_stopped)
    answers = iter([False, True])  # stopped while the saver waits
    assert not worker.submit(job("a", done, "second"), lambda: next(answers))
    assert done == [] and worker.in_flight() == 1  # the first is still being written


def test_the_worker_is_one_named_daemon_thread() -> None:
    """Named for a person reading a thread dump; a daemon, so a stuck disk cannot hold
    ComfyUI's exit (the exit waits EXIT_WAIT_SECONDS for it, see batch_pipeline)."""
    worker = SaveWorker()
    threads: list[threading.Thread] = []

    def work() -> None:
        threads.append(threading.current_thread())

    for _ in range(2):
        worker.submit(SaveJob("a", (), work), never_stopped)
    assert worker.wait(timeout=WAIT)
    assert threads[0] is threads[1]
    assert threads[0].name == "clientid_bridge_save" and threads[0].daemon


def test_a_failure_drops_its_batchs_later_jobs_and_is_raised_once(gate: threading.Event) -> None:
    worker, done = SaveWorker(depth=5), []
    worker.submit(job("a", done, "a1", gate=gate), never_stopped)
    worker.submit(failing("a", "No space left on device"), never_stopped)
    worker.submit(job("a", done, "a3"), never_stopped)
    worker.submit(job("b", done, "b1"), never_stopped)
    gate.set()
    assert worker.wait(timeout=WAIT)
    assert done == ["a1", "b1"]  # a3 came after a's failure: dropped, b is another batch
    worker.raise_failure("b")  # nothing failed there
    with pytest.raises(RuntimeError, match="No space left on device"):
        worker.raise_failure("a")
    worker.raise_failure("a")  # shown once


def test_a_job_handed_over_after_its_batchs_failure_was_shown_is_dropped_too() -> None:
    """The next node raised the error while a saver, past its own check, still handed over."""
    worker, done = SaveWorker(), []
    worker.submit(failing("a", "No space left on device"), never_stopped)
    assert worker.wait("a", timeout=WAIT)
    with pytest.raises(RuntimeError):
        worker.raise_failure("a")
    worker.submit(job("a", done, "late"), never_stopped)
    assert worker.wait("a", timeout=WAIT)
    assert done == []
    worker.raise_failure("a")  # the failure of a dropped job is not raised again


def test_a_new_run_forgets_an_unshown_failure() -> None:
    worker = SaveWorker()
    worker.submit(failing("a", "read-only"), never_stopped)
    assert worker.wait("a", timeout=WAIT)
    worker.forget_failure("a")
    worker.raise_failure("a")
    done: list[str] = []
    worker.submit(job("a", done, "again"), never_stopped)
    assert worker.wait("a", timeout=WAIT) and done == ["again"]  # the batch saves again


def test_the_files_of_jobs_in_flight_are_reserved_until_they_end(gate: threading.Event) -> None:
    worker, done = SaveWorker(), []
    worker.submit(job("a", done, "x", gate=gate), never_stopped)
    assert worker.reserved() == {Path("/out/x.png")}
    assert worker.is_pending(Path("/out/x.png")) and not worker.is_pending(Path("/out/y.png"))
    assert not worker.wait("a", timeout=0.05)  # still in flight
    gate.set()
    assert worker.wait("a", timeout=WAIT)
    assert worker.reserved() == frozenset() and worker.in_flight() == 0


def test_wait_for_one_batch_does_not_wait_for_another(gate: threading.Event) -> None:
    worker, done = SaveWorker(), []
    worker.submit(job("a", done, "a1", gate=gate), never_stopped)
    assert worker.wait("b", timeout=0)
    assert worker.in_flight("a") == 1 and worker.in_flight("b") == 0


def recorded(batch: str, name: str, done: list[str], finished: threading.Event) -> SaveJob:
    def work() -> None:
        done.append(name)
        finished.set()

    return SaveJob(batch, (), work)


def test_a_save_alone_in_flight_waits_for_release() -> None:
    worker, done, finished = SaveWorker(hold=LONG_HOLD), [], threading.Event()
    assert worker.submit(recorded("b", "one", done, finished), never_stopped)
    assert not finished.wait(0.2) and done == []  # held: the executor is between prompts
    worker.release()  # the next image's loader returned
    assert finished.wait(WAIT) and done == ["one"]


def test_a_hold_ends_by_itself_after_hold_seconds() -> None:
    worker, done, finished = SaveWorker(hold=0.05), [], threading.Event()
    assert worker.submit(recorded("b", "last", done, finished), never_stopped)
    assert finished.wait(WAIT) and done == ["last"]  # no next image: it starts all the same


def test_a_second_save_ends_the_hold() -> None:
    worker, done, finished = SaveWorker(hold=LONG_HOLD), [], threading.Event()
    assert worker.submit(recorded("b", "one", done, threading.Event()), never_stopped)
    assert worker.submit(recorded("b", "two", done, finished), never_stopped)
    assert finished.wait(WAIT) and done == ["one", "two"]  # behind: nothing held


def test_waiting_for_the_saves_ends_the_hold() -> None:
    worker, done = SaveWorker(hold=LONG_HOLD), []
    assert worker.submit(recorded("b", "one", done, threading.Event()), never_stopped)
    started = threading.Event()
    waited: list[bool] = []
    waiter = threading.Thread(
        target=lambda: (started.set(), waited.append(worker.wait("b"))), daemon=True
    )
    waiter.start()
    assert started.wait(WAIT)
    waiter.join(WAIT)
    assert waited == [True] and done == ["one"]


def test_depth_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="depth must be at least 1"):
        SaveWorker(depth=0)


# --- the prefetcher ----------------------------------------------------------------------


class Loads:
    """prepare/finish/discard that record what ran where."""

    def __init__(self, finish_gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.discarded: list[str] = []
        self.finish_gate = finish_gate

    def prepare(self, path: Path) -> str:
        self.calls.append(("prepare", path.name, threading.current_thread().name))
        if path.read_text() == "bad header":
            raise ValueError(f"cannot open {path.name}")
        return path.name

    def finish(self, name: str) -> str:
        self.calls.append(("finish", name, threading.current_thread().name))
        if self.finish_gate is not None:
            assert self.finish_gate.wait(WAIT)
        if name.startswith("bad"):
            raise ValueError(f"cannot decode {name}")
        return f"pixels of {name}"

    def discard(self, name: str) -> None:
        self.discarded.append(name)

    def prefetcher(self, ahead: int = 2) -> Prefetcher[str, str]:
        return Prefetcher(self.prepare, self.finish, self.discard, ahead)


def file(folder: Path, name: str, text: str = "pixels") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_take_gives_what_the_background_thread_decoded(tmp_path: Path) -> None:
    loads = Loads()
    prefetcher = loads.prefetcher()
    path = file(tmp_path, "a.png")
    prefetcher.prefetch(path)
    assert prefetcher.take(path) == "pixels of a.png"
    [(_, _, prepared_on), (_, _, finished_on)] = loads.calls
    assert prepared_on == threading.current_thread().name
    assert finished_on.startswith("clientid_bridge_prefetch")
    assert prefetcher.kept() == []


def test_take_of_a_file_not_prefetched_loads_it_there_and_then(tmp_path: Path) -> None:
    loads = Loads()
    assert loads.prefetcher().take(file(tmp_path, "b.png")) == "pixels of b.png"
    assert {thread for *_, thread in loads.calls} == {threading.current_thread().name}


@pytest.mark.parametrize(
    "change",
    [lambda path: path.write_text("other pixels"), lambda path: os.utime(path, ns=(1, 1))],
    ids=["rewritten", "touched"],
)
def test_a_file_changed_since_its_prefetch_is_read_again(
    tmp_path: Path, change: Callable[[Path], Any]
) -> None:
    loads = Loads()
    prefetcher = loads.prefetcher()
    path = file(tmp_path, "c.png")
    prefetcher.prefetch(path)
    change(path)
    assert prefetcher.take(path) == "pixels of c.png"
    prepared = [
        thread for call, name, thread in loads.calls if (call, name) == ("prepare", "c.png")
    ]
    assert prepared == [threading.current_thread().name] * 2  # at the prefetch, and again


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [("d.png", "bad header", "cannot open d.png"), ("bad.png", "pixels", "cannot decode bad.png")],
    ids=["prepare-fails", "finish-fails"],
)
def test_a_failure_ahead_is_raised_by_take_as_a_direct_load_would(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    loads = Loads()
    prefetcher = loads.prefetcher()
    path = file(tmp_path, name, text)
    prefetcher.prefetch(path)
    with pytest.raises(ValueError, match=message):
        prefetcher.take(path)
    assert [call for call, *_ in loads.calls].count("prepare") == 1  # kept, not tried twice


def test_a_missing_file_is_not_prefetched(tmp_path: Path) -> None:
    loads = Loads()
    loads.prefetcher().prefetch(tmp_path / "gone.png")
    assert loads.calls == []


def test_at_most_ahead_results_are_kept_and_the_dropped_ones_released(tmp_path: Path) -> None:
    gate = threading.Event()
    loads = Loads(finish_gate=gate)
    prefetcher = loads.prefetcher(ahead=1)
    first, second, third = (file(tmp_path, f"{n}.png") for n in ("1", "2", "3"))
    try:
        prefetcher.prefetch(first)  # its decode starts and holds the thread
        prefetcher.prefetch(second)  # queued behind it; drops the first (already running)
        prefetcher.prefetch(third)  # drops the second before it ran: released
        assert prefetcher.kept() == [third]
        assert loads.discarded == ["2.png"]
    finally:
        gate.set()
    assert prefetcher.take(third) == "pixels of 3.png"


def test_ahead_below_one_is_refused() -> None:
    loads = Loads()
    with pytest.raises(ValueError, match="ahead must be at least 1"):
        Prefetcher(loads.prepare, loads.finish, loads.discard, 0)


# --- the next prompt queued ahead --------------------------------------------------------


def test_take_hands_over_the_post_for_that_cursor_once() -> None:
    ahead = pipeline_module.QueueAhead()
    ahead.submit("b", 4, lambda: "prompt-4")
    future = ahead.take("b", 4)
    assert future is not None and future.result(WAIT) == "prompt-4"
    assert ahead.take("b", 4) is None  # handed over: Batch Next of a rerun POSTs its own
    assert ahead.take("other", 0) is None  # nothing queued ahead for that batch


def test_a_stale_cursor_gets_nothing_and_drops_it() -> None:
    ahead = pipeline_module.QueueAhead()
    ahead.submit("b", 4, lambda: "prompt-4")
    assert ahead.take("b", 5) is None
    assert ahead.take("b", 4) is None


def test_a_later_submit_replaces_the_earlier_one_of_its_batch() -> None:
    ahead = pipeline_module.QueueAhead()
    ahead.submit("b", 4, lambda: "prompt-4")
    ahead.submit("c", 9, lambda: "prompt-9")
    ahead.submit("b", 5, lambda: "prompt-5")
    assert ahead.take("b", 4) is None
    ahead.submit("b", 6, lambda: "prompt-6")
    assert [ahead.take(*at).result(WAIT) for at in (("b", 6), ("c", 9))] == [  # type: ignore[union-attr]
        "prompt-6",
        "prompt-9",
    ]


def test_posts_run_one_at_a_time_in_order_and_wait_sees_them_all_end(
    gate: threading.Event,
) -> None:
    ahead = pipeline_module.QueueAhead()
    ran: list[tuple[str, str]] = []

    def post(name: str) -> Callable[[], str]:
        def run() -> str:
            if name == "first":
                assert gate.wait(WAIT)
            ran.append((name, threading.current_thread().name))
            return name

        return run

    ahead.submit("a", 1, post("first"))
    ahead.submit("b", 1, post("second"))
    waiter = threading.Thread(target=ahead.wait)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and ran == []  # the second waits behind the first, and wait too
    gate.set()
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert [name for name, _ in ran] == ["first", "second"]
    assert all(thread.startswith("clientid_bridge_next") for _, thread in ran)


# --- the switch --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "on"),
    [(None, True), ("1", True), ("on", True), ("0", False), (" OFF ", False), ("false", False)],
    ids=["unset", "1", "on", "0", "off-padded", "false"],
)
def test_the_switch(value: str | None, on: bool) -> None:
    environ = {} if value is None else {pipeline_module.PIPELINE_SWITCH: value}
    assert pipeline_module.enabled(environ) is on


@pytest.mark.parametrize(("value", "made"), [("0", False), ("1", True)], ids=["off", "on"])
def test_the_process_pipeline_follows_the_switch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str, made: bool
) -> None:
    monkeypatch.setenv(pipeline_module.PIPELINE_SWITCH, value)
    monkeypatch.setattr(pipeline_module, "_pipeline", pipeline_module._UNSET)
    at_exit: list[tuple[Any, ...]] = []
    monkeypatch.setattr(pipeline_module.atexit, "register", lambda *args: at_exit.append(args))
    with caplog.at_level("INFO", logger="comfy_clientid_bridge"):
        first = pipeline_module.batch_pipeline()
    assert (first is not None) is made
    if first is not None:  # ComfyUI's exit waits for the saves in flight, a while at most
        assert at_exit == [(first.saves.wait, None, pipeline_module.EXIT_WAIT_SECONDS)]
    else:
        assert at_exit == []
        assert [r.getMessage() for r in caplog.records] == [
            "clientid_bridge: batch loop strictly serial (COMFY_CLIENTID_BRIDGE_PIPELINE)"
        ]
    monkeypatch.setenv(pipeline_module.PIPELINE_SWITCH, "1" if value == "0" else "0")
    assert pipeline_module.batch_pipeline() is first  # read once


# --- GET /view of a file still being saved -------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"filename": "a.png", "subfolder": "batch", "type": "output"}, "batch/a.png"),
        ({"filename": "a.png"}, "a.png"),
        ({"filename": "a.png", "type": "input"}, None),
        ({"filename": "a.png [output]"}, None),
        ({"filename": "../a.png"}, None),
        ({"filename": "/etc/passwd"}, None),
        ({}, None),
    ],
    ids=["output", "type-defaults-to-output", "input", "annotated", "dotdot", "absolute", "none"],
)
def test_the_viewed_output_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    query: dict[str, str],
    expected: str | None,
) -> None:
    monkeypatch.setattr(internals, "output_directory", lambda: tmp_path)
    found = internals.viewed_output_file(query)
    assert found == (None if expected is None else tmp_path.resolve() / expected)


async def test_a_view_of_a_pending_file_waits_until_it_is_saved(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    target = tmp_path / "a.png"
    pending = {target}
    answered: list[bool] = []

    async def view(request: web.Request) -> web.Response:
        answered.append(target not in pending)
        return web.Response(text="image")

    def is_pending(path: Path) -> bool:
        seen = path in pending
        pending.discard(path)  # the second look finds it written
        return seen

    app = web.Application(
        middlewares=[
            pending_view_middleware(
                viewed_file=lambda query: tmp_path / query["filename"],
                is_pending=is_pending,
                any_pending=lambda: True,
            )
        ]
    )
    app.router.add_get("/view", view)
    client = await aiohttp_client(app)
    response = await client.get("/view", params={"filename": "a.png"})
    assert response.status == 200 and answered == [True]


async def test_a_view_waits_no_longer_than_its_limit(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    app = web.Application(
        middlewares=[
            pending_view_middleware(
                viewed_file=lambda query: tmp_path / "stuck.png",
                is_pending=lambda path: True,  # a disk that never finishes
                any_pending=lambda: True,
                wait_seconds=0.05,
            )
        ]
    )

    async def view(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app.router.add_get("/api/view", view)
    client = await aiohttp_client(app)
    assert (await client.get("/api/view?filename=stuck.png")).status == 404


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"view_paths": ["view"]}, "view_paths must be absolute"),
        ({"wait_seconds": 0}, "wait_seconds must be positive"),
    ],
    ids=["relative-path", "no-wait"],
)
def test_the_view_middleware_checks_its_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pending_view_middleware(
            viewed_file=lambda query: None,
            is_pending=lambda path: False,
            any_pending=lambda: False,
            **settings,
        )
