"""A request is programmatic only when its TCP peer is a socket of this very process."""

from __future__ import annotations

import _socket
import asyncio
import gc
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from comfy_clientid_bridge.routing import self_connections
from comfy_clientid_bridge.routing.self_connections import SelfConnections, normalize


@pytest.fixture
def listener() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server
    server.close()


def connect(
    registry: SelfConnections, listener: socket.socket
) -> tuple[socket.socket, socket.socket]:
    registry.watch_port(listener.getsockname()[1])
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    return client, accepted


def test_own_connection_is_found_with_its_thread(listener: socket.socket) -> None:
    registry = SelfConnections()
    client, accepted = connect(registry, listener)
    found = registry.lookup(accepted.getpeername(), accepted.getsockname())
    assert found is not None and found.thread_name == threading.current_thread().name
    assert (found.local, found.remote) == (accepted.getpeername(), accepted.getsockname())
    client.close(), accepted.close()


@pytest.mark.parametrize(
    "peer",
    [("192.0.2.7", 40000), ("127.0.0.1", 1), ("::1", 40000, 0, 0), None, "garbage"],
    ids=["remote", "loopback-other-port", "ipv6-other", "none", "garbage"],
)
def test_foreign_peers_are_not_ours(listener: socket.socket, peer: object) -> None:
    registry = SelfConnections()
    client, accepted = connect(registry, listener)
    assert registry.lookup(peer, accepted.getsockname()) is None
    client.close(), accepted.close()


def test_unwatched_port_is_not_tracked(listener: socket.socket) -> None:
    registry = SelfConnections()
    registry.watch_port(1)
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    assert registry.lookup(accepted.getpeername(), accepted.getsockname()) is None
    client.close(), accepted.close()


def test_closed_sockets_are_forgotten(listener: socket.socket) -> None:
    registry = SelfConnections()
    client, accepted = connect(registry, listener)
    peer, here = accepted.getpeername(), accepted.getsockname()
    client.close()
    assert registry.lookup(peer, here) is None
    assert len(registry) == 0
    accepted.close()


def test_a_connection_closed_after_it_was_indexed_is_forgotten(listener: socket.socket) -> None:
    registry = SelfConnections()
    client, accepted = connect(registry, listener)
    peer, here = accepted.getpeername(), accepted.getsockname()
    assert registry.lookup(peer, here) is not None  # now indexed by its local address
    client.close()
    assert registry.lookup(peer, here) is None
    assert len(registry) == 0
    accepted.close()


def test_the_same_local_address_talking_to_another_server_is_not_ours(
    listener: socket.socket,
) -> None:
    """The index is by local address; a request whose two ends are not that socket's (its
    port reused towards another server, say) is not the indexed connection."""
    registry = SelfConnections()
    client, accepted = connect(registry, listener)
    peer = accepted.getpeername()
    assert registry.lookup(peer, accepted.getsockname()) is not None
    assert registry.lookup(peer, ("127.0.0.1", 1)) is None
    client.close(), accepted.close()


def test_tracking_is_bounded(listener: socket.socket) -> None:
    registry = SelfConnections(max_tracked=2)
    pairs = [connect(registry, listener) for _ in range(3)]
    assert len(registry) == 2
    for client, accepted in pairs:
        client.close(), accepted.close()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (("::ffff:127.0.0.1", 5, 0, 0), ("127.0.0.1", 5)),
        (("::1", 5, 0, 0), ("::1", 5)),
        (("127.0.0.1", 5), ("127.0.0.1", 5)),
        ("/tmp/sock", None),
        (("h",), None),
        (("127.0.0.1", "80"), None),
        ((None, 80), None),
    ],
    ids=["v4-mapped", "v6", "v4", "unix", "short", "port-not-int", "host-not-str"],
)
def test_normalize(address: object, expected: object) -> None:
    assert normalize(address) == expected


def test_max_tracked_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_tracked"):
        SelfConnections(max_tracked=0)


def test_many_short_connections_never_crowd_out_the_new_one(listener: socket.socket) -> None:
    """Closed connections leave the index first: request 1,000 is as ours as request 1."""
    registry = SelfConnections(max_tracked=4)
    for _ in range(10):
        client, accepted = connect(registry, listener)
        assert registry.lookup(accepted.getpeername(), accepted.getsockname()) is not None
        client.close(), accepted.close()
    assert len(registry) <= 4


def test_one_tracked_connection_is_allowed(listener: socket.socket) -> None:
    registry = SelfConnections(max_tracked=1)
    client, accepted = connect(registry, listener)
    assert registry.lookup(accepted.getpeername(), accepted.getsockname()) is not None
    client.close(), accepted.close()


def found(registry: SelfConnections, pair: tuple[socket.socket, socket.socket]) -> bool:
    accepted = pair[1]
    return registry.lookup(accepted.getpeername(), accepted.getsockname()) is not None


def test_beyond_the_bound_the_oldest_open_connection_goes(listener: socket.socket) -> None:
    registry = SelfConnections(max_tracked=2)
    first = connect(registry, listener)
    assert found(registry, first)  # indexed
    second = connect(registry, listener)
    assert found(registry, second)
    third = connect(registry, listener)
    assert (found(registry, first), found(registry, second), found(registry, third)) == (
        False,
        True,
        True,
    )
    for client, accepted in (first, second, third):
        client.close(), accepted.close()


def test_closed_connections_go_before_open_ones(listener: socket.socket) -> None:
    """A closed socket still referenced by its pack is dropped first, not the oldest open one."""
    registry = SelfConnections(max_tracked=2)
    oldest = connect(registry, listener)
    assert found(registry, oldest)
    closed = connect(registry, listener)
    assert found(registry, closed)
    closed[0].close()  # still referenced here, as a pack's pool might
    newest = connect(registry, listener)
    assert found(registry, oldest) and found(registry, newest)
    for client, accepted in (oldest, closed, newest):
        client.close(), accepted.close()


def test_connect_ex_is_recorded_too(listener: socket.socket) -> None:
    registry = SelfConnections()
    registry.watch_port(listener.getsockname()[1])
    client = socket.socket()
    assert client.connect_ex(listener.getsockname()) == 0
    accepted, _ = listener.accept()
    assert found(registry, (client, accepted))
    client.close(), accepted.close()


def test_an_asyncio_connection_from_another_thread_carries_that_thread(
    listener: socket.socket,
) -> None:
    """aiohttp and every asyncio client connect through loop.sock_connect -> sock.connect."""
    registry = SelfConnections()
    registry.watch_port(listener.getsockname()[1])
    looked_up = threading.Event()

    async def open_one() -> None:
        _, writer = await asyncio.open_connection(*listener.getsockname())
        await asyncio.get_running_loop().run_in_executor(None, looked_up.wait, 10)
        writer.close()

    worker = threading.Thread(target=asyncio.run, args=(open_one(),), name="Thread-9 (worker)")
    worker.start()
    accepted, _ = listener.accept()
    connection = registry.lookup(accepted.getpeername(), accepted.getsockname())
    looked_up.set(), worker.join()
    assert connection is not None and connection.thread_name == "Thread-9 (worker)"
    accepted.close()


def test_a_tls_socket_is_recorded_before_its_handshake(listener: socket.socket) -> None:
    """ssl.SSLSocket.connect goes through socket.socket.connect (super())."""
    registry = SelfConnections()
    registry.watch_port(listener.getsockname()[1])
    context = ssl.create_default_context()
    client = context.wrap_socket(
        socket.socket(), server_hostname="localhost", do_handshake_on_connect=False
    )
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    assert found(registry, (client, accepted))
    client.close(), accepted.close()


def test_a_failing_record_never_fails_the_connect(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = SelfConnections()
    registry.watch_port(listener.getsockname()[1])

    def broken(sock: object, address: object) -> None:
        raise RuntimeError("broken registry")

    monkeypatch.setattr(registry, "record", broken)
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    assert client.getpeername() == accepted.getsockname()
    client.close(), accepted.close()


def test_connect_is_wrapped_once_however_many_registries_watch() -> None:
    """No audit hook (it would be called for every id() in the process); one wrapper around
    the stdlib connect, shared by every registry, so wrappers never pile up."""
    registries = [SelfConnections() for _ in range(3)]
    for port, registry in enumerate(registries, start=1):
        registry.watch_port(port)
    for name in ("connect", "connect_ex"):
        assert getattr(socket.socket, name).__wrapped__ is getattr(_socket.socket, name)


def test_collected_registries_are_let_go() -> None:
    for port in range(1, 20):
        SelfConnections().watch_port(port)
    gc.collect()
    kept = SelfConnections()
    kept.watch_port(1)
    assert all(ref() is not None for ref in self_connections._registries)
    assert kept in [ref() for ref in self_connections._registries]


FRESH_PROCESS = """
import _socket, socket, sys
from comfy_clientid_bridge.routing.self_connections import SelfConnections
listener = socket.create_server(("127.0.0.1", 0))
assert socket.socket.connect is _socket.socket.connect  # nothing wrapped before a watch
registries = [SelfConnections(), SelfConnections()]
for registry in registries:
    registry.watch_port(listener.getsockname()[1])
for name in ("connect", "connect_ex"):
    assert getattr(socket.socket, name).__wrapped__ is getattr(_socket.socket, name), name
by_connect = socket.create_connection(listener.getsockname())
by_connect_ex = socket.socket()
assert by_connect_ex.connect_ex(listener.getsockname()) == 0
for client in (by_connect, by_connect_ex):
    accepted, _ = listener.accept()
    for registry in registries:
        assert registry.lookup(accepted.getpeername(), accepted.getsockname()) is not None
print("ok")
"""


def test_a_fresh_process_wraps_both_connects_once_for_every_registry() -> None:
    """In a process of its own: the wrappers are installed by the first watch only."""
    # Here too, so that a mutation tester that maps tests to the functions they call in
    # process (mutmut) runs this test for the wrapping code.
    SelfConnections().watch_port(1)
    root = Path(self_connections.__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], cwd=root, capture_output=True, text=True, check=False
    )
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr


def test_a_datagram_socket_is_not_tracked(listener: socket.socket) -> None:
    registry = SelfConnections()
    registry.watch_port(listener.getsockname()[1])
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagram.connect(listener.getsockname())
    assert len(registry) == 0
    datagram.close()


def test_a_lookup_without_our_end_leaves_the_connection_known(listener: socket.socket) -> None:
    registry = SelfConnections()
    client, accepted = connect(registry, listener)
    assert found(registry, (client, accepted))
    assert registry.lookup(accepted.getpeername(), None) is None
    assert found(registry, (client, accepted))
    client.close(), accepted.close()


def test_room_is_made_only_beyond_the_bound(listener: socket.socket) -> None:
    """At the bound nothing is dropped, not even a closed connection: the bound is a cap."""
    registry = SelfConnections(max_tracked=2)
    first = connect(registry, listener)
    first[0].close()
    second = connect(registry, listener)
    assert len(registry) == 2
    for sock in (*first, *second):
        sock.close()


def test_watching_a_second_port_registers_the_registry_once(listener: socket.socket) -> None:
    registry = SelfConnections()
    registry.watch_port(listener.getsockname()[1])
    registry.watch_port(1)
    assert [ref() for ref in self_connections._registries].count(registry) == 1
