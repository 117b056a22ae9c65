"""Which TCP connections to our own server were opened by code in this very process."""

from __future__ import annotations

import functools
import socket
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .thread_origin import Origin, acting_for

Address = tuple[str, int]

# Bounded so that a pack holding many idle keep-alive connections cannot grow us.
MAX_TRACKED = 256


@dataclass(frozen=True, slots=True)
class SelfConnection:
    """A client socket of this process whose peer is one of our server's sockets: the
    name of the thread that connected it, and the prompt that thread acted for (None for
    the executor itself and for threads that act for no prompt, see thread_origin)."""

    local: Address
    remote: Address
    thread_name: str
    origin: Origin | None = None


def normalize(address: Any) -> Address | None:
    """(host, port) of a socket address; IPv4-mapped IPv6 hosts are folded to IPv4."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


class SelfConnections:
    """Registry of sockets this process connected to one of the watched ports.

    Filled by a wrapper around `socket.socket.connect` and `connect_ex`, which runs in
    the connecting thread for every Python socket (urllib, requests, http.client, aiohttp,
    asyncio, websocket-client and ssl all connect through them). A request whose TCP peer
    is the local end of one of these sockets was made from inside this process: a fact
    read from the two ends of one connection, not a guess from headers.

    Not an audit hook (`sys.addaudithook` on `socket.connect`): a hook is called for every
    audited event of the process, `id()` among them, and doubled the time of the
    `copy.deepcopy` ComfyUI makes of each queued prompt (bench/programmatic_check.py).

    Sockets are indexed by their local address once connected, so a lookup costs one
    dict probe however many keep-alive connections the process holds, and two system
    calls only when it matches (to check the socket still is that connection).
    """

    def __init__(self, *, max_tracked: int = MAX_TRACKED) -> None:
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be >= 1, got {max_tracked!r}")
        self._max_tracked = max_tracked
        self._ports: frozenset[int] = frozenset()
        self._connecting: dict[int, _Entry] = {}  # recorded, ends not known yet
        self._by_local: dict[Address, _Entry] = {}  # connected: local address -> entry
        self._lock = threading.Lock()
        self._hooked = False

    @property
    def ports(self) -> frozenset[int]:
        return self._ports

    def __len__(self) -> int:
        return len(self._connecting) + len(self._by_local)

    def watch_port(self, port: int) -> None:
        """Track connections to `port`; wraps `socket.socket`'s connects on first use."""
        if port in self._ports:
            return
        with self._lock:
            self._ports = self._ports | {port}
            if not self._hooked:
                _watch_connects(self)
                self._hooked = True

    def record(self, sock: object, address: object) -> None:
        """Called by the connect wrapper, in the connecting thread, before the connect."""
        if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
            return
        target = normalize(address)
        if target is None or target[1] not in self._ports:
            return
        entry = _Entry(weakref.ref(sock), threading.current_thread().name, acting_for())
        with self._lock:
            self._connecting[id(sock)] = entry
            if len(self) > self._max_tracked:
                self._make_room()

    def lookup(self, peername: object, sockname: object) -> SelfConnection | None:
        """The tracked socket at the other end of the connection (`peername` -> `sockname`)."""
        if not self._connecting and not self._by_local:
            return None
        peer, here = normalize(peername), normalize(sockname)
        if peer is None or here is None:
            return None
        if self._connecting:
            self._settle()
        entry = self._by_local.get(peer)
        if entry is None:
            return None
        if _ends(entry.ref()) != (peer, here):  # closed, or its port reused since
            with self._lock:
                if self._by_local.get(peer) is entry:
                    del self._by_local[peer]
            return None
        return SelfConnection(peer, here, entry.thread_name, entry.origin)

    def _settle(self) -> None:
        """Moves sockets whose connect completed into the index by local address."""
        with self._lock:
            for key, entry in list(self._connecting.items()):
                ends = _ends(entry.ref())
                if ends is None:
                    del self._connecting[key]
                elif ends[0] is not None and ends[1] is not None:
                    del self._connecting[key]
                    self._by_local[ends[0]] = entry

    def _make_room(self) -> None:
        """Caller holds the lock. Closed sockets go first (a connection's entry stays in the
        index until then), then the oldest connected ones; never the one just recorded."""
        for table in (self._connecting, self._by_local):
            for key in [key for key, entry in table.items() if _closed(entry.ref())]:
                del table[key]  # type: ignore[arg-type]
        while len(self) > self._max_tracked and self._by_local:
            del self._by_local[next(iter(self._by_local))]
        while len(self) > self._max_tracked:
            del self._connecting[next(iter(self._connecting))]


def _closed(sock: socket.socket | None) -> bool:
    return sock is None or sock.fileno() == -1


@dataclass(frozen=True, slots=True)
class _Entry:
    ref: weakref.ref[socket.socket]
    thread_name: str
    origin: Origin | None


def _ends(sock: socket.socket | None) -> tuple[Address | None, Address | None] | None:
    """(local, remote) of a live socket; None once it is closed or collected."""
    if sock is None or sock.fileno() == -1:
        return None
    try:
        return normalize(sock.getsockname()), normalize(sock.getpeername())
    except OSError:  # connect still in progress or failed: not a match, not dead yet
        return (None, None)


# The registries the connect wrappers record into; replaced whole under the lock, so a
# connecting thread reads a consistent tuple without taking it.
_registries: tuple[weakref.ref[SelfConnections], ...] = ()
_registries_lock = threading.Lock()


def _watch_connects(registry: SelfConnections) -> None:
    """Records every connect into `registry` from now on. Wraps `socket.socket.connect`
    and `connect_ex` once per process (the Python class that every stdlib, asyncio and ssl
    socket is an instance of). Sockets that never call them (a C library's own,
    `_socket.socket` used bare) are not seen: their requests count as a script's."""
    global _registries
    with _registries_lock:
        alive = tuple(ref for ref in _registries if ref() is not None)
        if not _registries:
            for name in ("connect", "connect_ex"):
                setattr(socket.socket, name, _recording(getattr(socket.socket, name)))
        _registries = (*alive, weakref.ref(registry))


def _recording(connect: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(connect)
    def recorded_connect(sock: socket.socket, address: Any) -> Any:
        for ref in _registries:
            registry = ref()
            if registry is not None:
                try:
                    registry.record(sock, address)
                except Exception:  # noqa: S110 - raising here would fail the caller's connect()
                    pass
        return connect(sock, address)

    return recorded_connect


# One per process: the connect wrappers are process-wide and stay for its life.
SELF_CONNECTIONS = SelfConnections()
