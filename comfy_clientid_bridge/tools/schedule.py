"""Which server gets which image next: leases, timeouts and late finishes, as pure logic.

No I/O and no clock of its own (one is injected), so every decision is tested without
servers. The runner (tools/flow.py) tells it what the servers did and carries out what it
decides.

Decisions:
- An idle server gets an image only when it would finish it before the other servers could
  finish every image still waiting: a slow server stops taking work near the end instead of
  holding back the last image (the field's complaint about static shards).
- Each server holds up to `depth` prompts (running plus queued on it), so it never waits for
  the runner between two images.
- A lease ends by a finish (the first finish of an image is the one accepted; a later one is a
  late duplicate), by the server's connection being gone for `lost_after` seconds, or by the
  image running longer than the server's stall limit; its image then goes first in line.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# A ComfyUI that crashed or was killed refuses connections at once, and booting one again
# takes longer than this (model loading aside, 10-20 s on our CI); a connection back within
# this time is a blip whose queue is intact, so its leases are kept. Longer, each image
# it held waits at most this long before another server takes it.
LOST_AFTER = 10.0
# An image that runs this many times the server's usual time is stuck (a hung GPU driver, a
# deadlocked node) ...
STALL_FACTOR = 10.0
# ... but never less than this: the first image of a server loads its models.
STALL_FLOOR = 300.0
# Prompts held by one server: one running and one waiting on the server, so it starts the
# next image without a round trip to the runner ...
DEPTH = 2
# ... unless its images take this long: the round trip (milliseconds) is nothing beside
# them, and an image waiting there would be committed to a slow server early (the end of
# the run, and what moves when it dies).
ONE_AT_A_TIME_FROM = 2.0
# Weight of the newest image time in a server's running average.
RATE_WEIGHT = 0.3


@dataclass
class Lease:
    """One attempt at an image on a server."""

    image: int
    server: str
    attempt: int
    assigned_at: float
    started_at: float | None = None
    prompt_id: str | None = None


@dataclass
class Server:
    name: str
    up: bool = False
    down_since: float | None = None
    stalled: bool = False
    seconds_per_image: float | None = None
    leases: dict[int, Lease] = field(default_factory=dict)  # by attempt
    done: int = 0


@dataclass(frozen=True)
class Move:
    """An image taken from a server; `to` is filled in when another server takes it."""

    image: int
    source: str
    reason: str
    to: str | None = None


@dataclass(frozen=True)
class Verdict:
    """What a finish means: "accepted" (the image is done), "late" (accepted from a revoked
    attempt: nothing else finished it first), "duplicate" (finished before; discard), or
    "failed". `cancel` are other attempts at the same image to cancel on their servers."""

    outcome: str
    cancel: tuple[Lease, ...] = ()


class Scheduler:
    def __init__(
        self,
        images: Iterable[int],
        *,
        clock: Callable[[], float],
        depth: int = DEPTH,
        lost_after: float = LOST_AFTER,
        stall_factor: float = STALL_FACTOR,
        stall_floor: float = STALL_FLOOR,
        first_attempt: int = 1,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1; got {depth}")
        self.clock, self.depth = clock, depth
        self.lost_after, self.stall_factor, self.stall_floor = lost_after, stall_factor, stall_floor
        self.pending: deque[int] = deque(images)
        self.servers: dict[str, Server] = {}
        self.active: dict[int, Lease] = {}  # attempt -> lease, on any server
        self.revoked: dict[int, Lease] = {}  # attempt -> lease taken back (may finish late)
        self.done: set[int] = set()
        self.failed: set[int] = set()
        self.moves: list[Move] = []
        self._open_moves: dict[int, int] = {}  # image -> index in moves awaiting a `to`
        self._attempts = itertools.count(first_attempt)

    # --- servers ------------------------------------------------------------------------

    def server(self, name: str) -> Server:
        return self.servers.setdefault(name, Server(name))

    def server_up(self, name: str) -> None:
        server = self.server(name)
        server.up, server.down_since, server.stalled = True, None, False

    def server_down(self, name: str) -> None:
        server = self.server(name)
        server.up = False
        if server.down_since is None:  # gone since the first time it was seen gone
            server.down_since = self.clock()

    def live(self) -> list[Server]:
        return [s for s in self.servers.values() if s.up and not s.stalled]

    # --- handing out ----------------------------------------------------------------------

    def assign(self) -> list[Lease]:
        """The leases to submit now."""
        leases = []
        while self._skip_finished():
            free = [s for s in self.live() if len(s.leases) < self.depth_of(s)]
            if not free:
                break
            server = min(free, key=lambda s: self._free_at(s) + self._seconds(s))
            if not self._useful(server):
                break
            leases.append(self._lease(server, self.pending.popleft()))
        return leases

    def _skip_finished(self) -> bool:
        """Whether an image waits; drops those finished meanwhile (a late finish)."""
        while self.pending and (self.pending[0] in self.done or self.pending[0] in self.failed):
            self.pending.popleft()
        return bool(self.pending)

    def _lease(self, server: Server, image: int) -> Lease:
        lease = Lease(image, server.name, next(self._attempts), self.clock())
        server.leases[lease.attempt] = lease
        self.active[lease.attempt] = lease
        moved = self._open_moves.pop(image, None)
        if moved is not None:
            move = self.moves[moved]
            self.moves[moved] = Move(move.image, move.source, move.reason, server.name)
        return lease

    def depth_of(self, server: Server) -> int:
        """How many prompts the server may hold."""
        seconds = server.seconds_per_image
        return 1 if seconds is not None and seconds >= ONE_AT_A_TIME_FROM else self.depth

    def _seconds(self, server: Server) -> float:
        """The server's time per image; before its first, the others' median (or 1 s)."""
        if server.seconds_per_image is not None:
            return server.seconds_per_image
        known = [s.seconds_per_image for s in self.live() if s.seconds_per_image is not None]
        return statistics.median(known) if known else 1.0

    def _free_at(self, server: Server) -> float:
        """When the server would have finished what it holds."""
        now, seconds = self.clock(), self._seconds(server)
        free = now
        for lease in server.leases.values():
            if lease.started_at is not None:
                free += max(0.0, seconds - (now - lease.started_at))
            else:
                free += seconds
        return free

    def _useful(self, server: Server) -> bool:
        """Whether the server finishes an image before the others finish all that wait (a
        tie goes to the server asking: the others count only images done strictly before)."""
        finish = self._free_at(server) + self._seconds(server)
        others = 0
        for other in self.live():
            if other is not server:
                spare = finish - self._free_at(other)
                others += max(0, math.ceil(spare / self._seconds(other) - 1e-9) - 1)
                if others >= len(self.pending):
                    return False
        return True

    # --- what the servers did -------------------------------------------------------------

    def started(self, attempt: int) -> None:
        lease = self.active.get(attempt)
        if lease is not None and lease.started_at is None:
            lease.started_at = self.clock()

    def finished(self, attempt: int, *, ok: bool) -> Verdict:
        """A server finished an attempt (ok: the image was saved, else it failed there)."""
        lease = self.active.pop(attempt, None) or self.revoked.pop(attempt, None)
        if lease is None:
            return Verdict("duplicate")
        server = self.server(lease.server)
        was_active = server.leases.pop(attempt, None) is not None
        server.stalled = False  # it answers again
        if lease.image in self.done:
            return Verdict("duplicate")
        if not ok:
            if not was_active:  # a revoked attempt failing changes nothing
                return Verdict("duplicate")
            self.failed.add(lease.image)
            return Verdict("failed")
        self._learn(server, lease)
        self.done.add(lease.image)
        server.done += 1
        return Verdict("accepted" if was_active else "late", self._others(lease))

    def _others(self, lease: Lease) -> tuple[Lease, ...]:
        """Other active attempts at the same image: taken back, to be cancelled."""
        others = tuple(
            other
            for other in self.active.values()
            if other.image == lease.image and other.attempt != lease.attempt
        )
        for other in others:
            self._take_back(other)
        return others

    def _learn(self, server: Server, lease: Lease) -> None:
        if lease.started_at is None:
            return
        took = self.clock() - lease.started_at
        known = server.seconds_per_image
        server.seconds_per_image = (
            took if known is None else RATE_WEIGHT * took + (1 - RATE_WEIGHT) * known
        )

    def returned(self, attempt: int) -> None:
        """The attempt never ran and never will (refused, interrupted, unknown to the
        server): the image goes first in line, with no move recorded."""
        lease = self.active.pop(attempt, None)
        if lease is None:
            return
        self.server(lease.server).leases.pop(attempt, None)
        if lease.image not in self.done:
            self.pending.appendleft(lease.image)

    def adopt(self, image: int, server: str, attempt: int, prompt_id: str) -> Lease:
        """An attempt of an earlier run still queued or running on `server` (a restart)."""
        self.pending = deque(i for i in self.pending if i != image)
        lease = Lease(image, server, attempt, self.clock(), prompt_id=prompt_id)
        self.server(server).leases[attempt] = lease
        self.active[attempt] = lease
        return lease

    # --- timeouts ------------------------------------------------------------------------

    def stall_limit(self, server: Server) -> float:
        seconds = server.seconds_per_image
        return (
            self.stall_floor
            if seconds is None
            else max(self.stall_floor, self.stall_factor * seconds)
        )

    def expire(self) -> list[Lease]:
        """Takes back the leases of servers gone for `lost_after` and of stuck images;
        returns them (the runner cancels them where it still can)."""
        now, taken = self.clock(), []
        for server in self.servers.values():
            if not server.up and server.down_since is not None:
                if now - server.down_since >= self.lost_after:
                    taken += self._revoke_all(server, "lost")
            elif any(
                lease.started_at is not None and now - lease.started_at > self.stall_limit(server)
                for lease in server.leases.values()
            ):
                server.stalled = True
                taken += self._revoke_all(server, "stalled")
        return taken

    def _revoke_all(self, server: Server, reason: str) -> list[Lease]:
        leases = sorted(server.leases.values(), key=lambda lease: lease.attempt, reverse=True)
        for lease in leases:
            self._take_back(lease)
            if lease.image not in self.done:
                self.pending.appendleft(lease.image)
                self._open_moves[lease.image] = len(self.moves)
                self.moves.append(Move(lease.image, server.name, reason))
        return leases

    def _take_back(self, lease: Lease) -> None:
        self.active.pop(lease.attempt, None)
        self.server(lease.server).leases.pop(lease.attempt, None)
        self.revoked[lease.attempt] = lease

    # --- the end ---------------------------------------------------------------------------

    @property
    def finished_all(self) -> bool:
        return not self._skip_finished() and not self.active

    def in_flight(self) -> int:
        return len(self.active)
