"""The chaos suite's TCP proxy (devtools/reliability/proxy.py) against a tiny echo server on loopback."""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from devtools.reliability.proxy import TcpProxy
from devtools.services.ports import LOOPBACK

WAIT_S = 10.0  # bound on waits for something that must happen (a reply, a reset)
QUIET_S = 0.3  # how long a stalled connection is watched for a reply that must not come


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.connections += 1  # type: ignore[attr-defined]
        with contextlib.suppress(ConnectionResetError):  # the proxy resets its upstream on cut()
            while data := self.request.recv(65536):
                self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    connections = 0


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer((LOOPBACK, 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(echo.server_address[1]) as running:
        yield running


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, proxy.port), timeout=WAIT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def receive(sock: socket.socket, size: int, timeout_s: float = WAIT_S) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def round_trip(sock: socket.socket, data: bytes) -> bool:
    sock.sendall(data)
    return receive(sock, len(data)) == data


def assert_reset_on_arrival(proxy: TcpProxy) -> None:
    """The kernel completes the handshake before the proxy accepts and resets: the RST reaches the
    client during connect() or after it, depending on timing."""
    with pytest.raises(ConnectionResetError), connect(proxy) as sock:
        receive(sock, 1)


def assert_silent(sock: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        receive(sock, 1, timeout_s=QUIET_S)


def test_pass_through_forwards_both_ways_and_half_close(proxy: TcpProxy) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB: many chunks each way
    with connect(proxy) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        echoed = receive(sock, len(payload) + 1)  # + 1: reads on to the EOF the echo server's close sends
        sender.join()
    assert echoed == payload
    assert proxy.stats.bytes_forwarded == 2 * len(payload)


def test_latency_holds_every_chunk_back_in_each_direction(proxy: TcpProxy) -> None:
    latency_s = 0.5
    with connect(proxy) as sock:
        assert round_trip(sock, b"warm")
        proxy.add_latency(latency_s)
        sent = time.monotonic()
        sock.sendall(b"ping")
        assert receive(sock, 4) == b"ping"
        # A lower bound only (the proxy sleeps at least this long): to the echo server and back.
        assert time.monotonic() - sent >= 2 * latency_s
        proxy.pass_through()
        sock.sendall(b"pong")
        assert receive(sock, 4) == b"pong"


def test_black_hole_stalls_open_and_new_connections_then_delivers_everything(
    proxy: TcpProxy, echo: EchoServer
) -> None:
    with connect(proxy) as old:
        assert round_trip(old, b"one")
        proxy.black_hole()
        old.sendall(b"two")
        with connect(proxy) as new:  # accepted: the client cannot tell it from a working connection
            new.sendall(b"three")
            assert_silent(old)
            assert_silent(new)
            assert echo.connections == 1  # the new one never reached the target
            proxy.pass_through()
            assert receive(old, 3) == b"two"
            assert receive(new, 5) == b"three"
    assert echo.connections == 2


def test_cut_resets_open_and_new_connections_until_passed_again(proxy: TcpProxy) -> None:
    with connect(proxy) as old:
        assert round_trip(old, b"one")
        proxy.cut()
        with pytest.raises(ConnectionResetError):
            receive(old, 1)
    assert_reset_on_arrival(proxy)
    proxy.pass_through()
    with connect(proxy) as again:
        assert round_trip(again, b"back")
    assert proxy.stats.reset >= 2


def test_a_stalled_connection_holds_a_bounded_amount_in_the_proxy(proxy: TcpProxy) -> None:
    chunk = b"x" * 2**20
    limit = 256 * 2**20  # what an unbounded proxy would swallow whole
    with connect(proxy) as sock:
        assert round_trip(sock, b"up")  # forwarding: the proxy reads this connection
        proxy.black_hole()
        sock.setblocking(False)
        sent = 0
        while sent < limit:
            if not select.select([], [sock], [], 2.0)[1]:
                break  # the sender is held back: kernel buffers and the proxy's queue are full
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                continue
    # Loopback socket buffers (a few MiB each way) plus the proxy's queue (16 x 64 KiB).
    assert sent < 64 * 2**20


def test_connections_beyond_the_bound_are_reset(echo: EchoServer) -> None:
    with TcpProxy(echo.server_address[1], max_connections=2) as proxy:
        first, second = connect(proxy), connect(proxy)
        for sock in (first, second):  # each is registered once it has echoed
            assert round_trip(sock, b"hi")
        assert_reset_on_arrival(proxy)
        first.close()
        second.close()
