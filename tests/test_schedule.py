"""The scheduler's decisions without servers: a clock the test moves, servers that are names."""

from __future__ import annotations

import heapq

import pytest

from comfy_clientid_bridge.tools.schedule import Lease, Move, Scheduler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scheduler(images: int, *servers: str, **options: float) -> tuple[Scheduler, Clock]:
    clock = Clock()
    plan = Scheduler(range(images), clock=clock, **options)  # type: ignore[arg-type]
    for name in servers:
        plan.server_up(name)
    return plan, clock


def on(leases: list[Lease]) -> list[tuple[str, int]]:
    return [(lease.server, lease.image) for lease in leases]


def run_one(plan: Scheduler, clock: Clock, lease: Lease, seconds: float) -> None:
    plan.started(lease.attempt)
    clock.now += seconds
    assert plan.finished(lease.attempt, ok=True).outcome == "accepted"


def simulate(plan: Scheduler, clock: Clock, seconds: dict[str, float]) -> dict[str, int]:
    """Servers that take a fixed time per image, one at a time, run to the end; -> images
    per server. The clock ends at the makespan."""
    queues: dict[str, list[Lease]] = {name: [] for name in seconds}
    running: list[tuple[float, int, str]] = []  # (finish time, attempt, server)
    counts = dict.fromkeys(seconds, 0)

    def feed() -> None:
        for lease in plan.assign():
            queues[lease.server].append(lease)
        for name, queue in queues.items():
            if queue and not any(server == name for _, _, server in running):
                lease = queue.pop(0)
                plan.started(lease.attempt)
                heapq.heappush(running, (clock.now + seconds[name], lease.attempt, name))

    feed()
    while running:
        clock.now, attempt, name = heapq.heappop(running)
        assert plan.finished(attempt, ok=True).outcome == "accepted"
        counts[name] += 1
        feed()
    assert plan.finished_all
    return counts


def test_each_server_gets_depth_images_at_the_start() -> None:
    plan, _ = scheduler(10, "a", "b", depth=2)
    assert sorted(on(plan.assign())) == [("a", 0), ("a", 2), ("b", 1), ("b", 3)]
    assert plan.assign() == []  # both full


@pytest.mark.parametrize(
    ("seconds", "limit"),
    [
        ({"a": 0.05, "b": 0.05, "c": 0.4}, 1.1),
        ({"a": 1.0, "b": 3.0}, 1.15),
        ({"a": 1.0, "b": 1.0, "c": 1.0}, 1.05),
    ],
    ids=["two-fast-one-slow", "three-to-one", "equal"],
)
def test_the_makespan_is_near_the_ideal(seconds: dict[str, float], limit: float) -> None:
    plan, clock = scheduler(60, *seconds)
    start = clock.now
    counts = simulate(plan, clock, seconds)
    ideal = 60 / sum(1 / s for s in seconds.values())
    assert sum(counts.values()) == 60
    assert (clock.now - start) / ideal <= limit, counts


def test_a_slow_server_takes_no_image_it_would_finish_last() -> None:
    plan, clock = scheduler(3, "fast", "slow", depth=1)
    plan.server("fast").seconds_per_image = 1.0
    plan.server("slow").seconds_per_image = 10.0
    # Three images: the fast server does them in 3 s, the slow one would take 10 s for one.
    assert on(plan.assign()) == [("fast", 0)]


def test_a_slow_server_takes_work_while_much_waits() -> None:
    plan, _ = scheduler(30, "fast", "slow", depth=1)
    plan.server("fast").seconds_per_image = 1.0
    plan.server("slow").seconds_per_image = 10.0
    assert sorted(on(plan.assign())) == [("fast", 0), ("slow", 1)]


def test_a_server_gone_keeps_its_leases_for_lost_after_then_they_move() -> None:
    plan, clock = scheduler(4, "a", "b", depth=1, lost_after=10)
    first = {lease.server: lease for lease in plan.assign()}
    plan.server_down("b")
    clock.now += 9.9
    assert plan.expire() == []
    clock.now += 0.2
    assert plan.expire() == [first["b"]]
    assert plan.pending[0] == first["b"].image  # first in line
    run_one(plan, clock, first["a"], 1.0)
    [again] = plan.assign()
    assert (again.server, again.image) == ("a", first["b"].image)
    assert plan.moves == [Move(first["b"].image, "b", "lost", "a")]


def test_a_server_back_within_lost_after_keeps_its_leases() -> None:
    plan, clock = scheduler(4, "a", "b", depth=1, lost_after=10)
    plan.assign()
    plan.server_down("b")
    clock.now += 5
    plan.server_up("b")
    clock.now += 20
    assert plan.expire() == [] and plan.moves == []


def test_a_late_finish_after_the_image_was_done_elsewhere_is_a_duplicate() -> None:
    plan, clock = scheduler(1, "a", "b", depth=1, lost_after=1)
    [lease] = plan.assign()
    plan.server_down(lease.server)
    clock.now += 2
    plan.expire()
    [again] = plan.assign()
    run_one(plan, clock, again, 1.0)
    plan.server_up(lease.server)
    assert plan.finished(lease.attempt, ok=True).outcome == "duplicate"
    assert plan.done == {0} and plan.server(lease.server).done == 0


def test_a_late_finish_first_is_accepted_and_cancels_the_new_attempt() -> None:
    plan, clock = scheduler(1, "a", "b", depth=1, lost_after=1)
    [lease] = plan.assign()
    plan.server_down(lease.server)
    clock.now += 2
    plan.expire()
    [again] = plan.assign()
    plan.server_up(lease.server)
    verdict = plan.finished(lease.attempt, ok=True)
    assert (verdict.outcome, verdict.cancel) == ("late", (again,))
    assert plan.finished(again.attempt, ok=True).outcome == "duplicate"
    assert plan.finished_all


def test_a_late_finish_while_the_image_still_waits_takes_it_out_of_line() -> None:
    plan, clock = scheduler(2, "a", depth=1, lost_after=1)
    [lease] = plan.assign()
    plan.server_down("a")
    clock.now += 2
    plan.expire()
    plan.server_up("a")
    assert plan.finished(lease.attempt, ok=True).outcome == "late"
    assert on(plan.assign()) == [("a", 1)]


def test_an_image_running_past_the_stall_limit_moves_and_the_server_gets_nothing() -> None:
    plan, clock = scheduler(4, "a", "b", depth=1, stall_factor=10, stall_floor=5)
    leases = {lease.server: lease for lease in plan.assign()}
    run_one(plan, clock, leases["a"], 1.0)
    plan.server("b").seconds_per_image = 1.0
    plan.started(leases["b"].attempt)
    plan.assign()
    clock.now += 10.0
    assert plan.expire() == []  # 10 s is not past max(5, 10 x 1 s)
    clock.now += 0.1
    assert plan.expire() == [leases["b"]]
    assert plan.server("b").stalled
    assert {lease.server for lease in plan.assign()} <= {"a"}
    # The stuck image finishing late un-stalls the server.
    assert plan.finished(leases["b"].attempt, ok=True).outcome == "late"
    assert not plan.server("b").stalled


def test_the_first_image_of_a_server_has_the_stall_floor() -> None:
    plan, clock = scheduler(1, "a", stall_floor=300)
    [lease] = plan.assign()
    plan.started(lease.attempt)
    clock.now += 299
    assert plan.expire() == []
    clock.now += 2
    assert plan.expire() == [lease]


def test_a_server_that_joins_late_gets_work() -> None:
    plan, clock = scheduler(20, "a", depth=1)
    [lease] = plan.assign()
    run_one(plan, clock, lease, 1.0)
    plan.server_up("late")
    assert sorted(server for server, _ in on(plan.assign())) == ["a", "late"]


def test_a_failed_image_is_not_tried_again() -> None:
    plan, _ = scheduler(2, "a", depth=1)
    [lease] = plan.assign()
    assert plan.finished(lease.attempt, ok=False).outcome == "failed"
    assert on(plan.assign()) == [("a", 1)]
    assert plan.failed == {0}


def test_a_returned_attempt_goes_first_in_line_without_a_move() -> None:
    plan, _ = scheduler(3, "a", depth=1)
    [lease] = plan.assign()
    plan.returned(lease.attempt)
    assert on(plan.assign()) == [("a", 0)]
    assert plan.moves == []


def test_an_adopted_attempt_is_not_handed_out_again() -> None:
    plan, clock = scheduler(2, "a", depth=2)
    adopted = plan.adopt(1, "a", 41, "p-old")
    assert on(plan.assign()) == [("a", 0)]
    plan.started(adopted.attempt)
    clock.now += 1
    assert plan.finished(41, ok=True).outcome == "accepted"


def test_the_rate_is_learnt_from_start_to_finish() -> None:
    plan, clock = scheduler(3, "a", depth=1)
    [lease] = plan.assign()
    clock.now += 5  # waiting in the server's queue does not count
    run_one(plan, clock, lease, 2.0)
    assert plan.server("a").seconds_per_image == 2.0
    [lease] = plan.assign()
    run_one(plan, clock, lease, 4.0)
    assert plan.server("a").seconds_per_image == pytest.approx(0.3 * 4 + 0.7 * 2)


def test_depth_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Scheduler([], clock=Clock(), depth=0)


@pytest.mark.parametrize(
    ("seconds", "held"), [(None, 2), (0.5, 2), (1.99, 2), (2.0, 1), (8.0, 1)], ids=str
)
def test_a_server_with_long_images_holds_one_at_a_time(seconds: float | None, held: int) -> None:
    plan, _ = scheduler(100, "a", depth=2)
    plan.server("a").seconds_per_image = seconds
    assert len(plan.assign()) == held


def test_a_finish_or_return_of_an_attempt_never_handed_out_changes_nothing() -> None:
    plan, _ = scheduler(2, "a", depth=1)
    assert plan.finished(999, ok=True).outcome == "duplicate"
    plan.returned(999)
    assert list(plan.pending) == [0, 1] and plan.done == set()


def test_each_accepted_image_counts_for_its_server() -> None:
    plan, clock = scheduler(2, "a", depth=1)
    for _ in range(2):
        [lease] = plan.assign()
        run_one(plan, clock, lease, 1.0)
    assert plan.server("a").done == 2


def test_leases_move_at_exactly_lost_after() -> None:
    plan, clock = scheduler(2, "a", depth=1, lost_after=10)
    [lease] = plan.assign()
    plan.server_down("a")
    clock.now += 10
    assert plan.expire() == [lease]


def test_a_server_seen_gone_twice_is_timed_from_the_first() -> None:
    plan, clock = scheduler(2, "a", depth=1, lost_after=10)
    [lease] = plan.assign()
    plan.server_down("a")
    clock.now += 6
    plan.server_down("a")  # a failed reconnect says so again
    clock.now += 4
    assert plan.expire() == [lease]


def test_every_server_gone_is_expired_in_one_pass() -> None:
    plan, clock = scheduler(4, "a", "b", depth=1, lost_after=1)
    leases = plan.assign()
    plan.server_down("a")
    plan.server_down("b")
    clock.now += 2
    assert sorted(lease.attempt for lease in plan.expire()) == sorted(l.attempt for l in leases)


def test_the_images_of_a_server_gone_keep_their_order_at_the_front() -> None:
    plan, clock = scheduler(6, "a", depth=3, lost_after=1)
    assert [lease.image for lease in plan.assign()] == [0, 1, 2]
    plan.server_down("a")
    clock.now += 2
    plan.expire()
    assert list(plan.pending) == [0, 1, 2, 3, 4, 5]


def test_a_second_start_event_keeps_the_first_start_time() -> None:
    plan, clock = scheduler(2, "a", depth=1)
    [lease] = plan.assign()
    plan.started(lease.attempt)
    clock.now += 1
    plan.started(lease.attempt)
    clock.now += 1
    plan.finished(lease.attempt, ok=True)
    assert plan.server("a").seconds_per_image == 2.0
