"""A small controllable TCP proxy for the network-fault scenarios: loopback only, bounded, switchable.

`TcpProxy(target_port).start()` listens on a free loopback port and forwards every connection to the
target. A scenario switches its mode at run time, from any thread:

- `pass_through()`: forward as it comes.
- `add_latency(s)`: every chunk is written `s` seconds after it was read, in both directions (pipelined:
  latency, not a bandwidth cap; so a request/response round trip takes at least 2 s).
- `black_hole()`: new connections are accepted but never reach the target, open ones stop forwarding
  (no RST, no FIN): what a client sees of a network partition. Nothing is dropped: when the mode changes
  back, what waited is delivered, as TCP retransmission would after a partition heals.
- `cut()`: every open connection is reset, every new one is reset as soon as it is accepted (the listening
  port stays ours, so nothing else can take it while the fault lasts).

Bounded: at most `max_connections` at once (more are reset), and per connection and direction at most
`queue_chunks` chunks of at most `chunk_bytes` wait inside the proxy; beyond that it stops reading and
TCP's own flow control holds the sender back.

The proxy runs its own asyncio loop in a daemon thread, so the synchronous scenario code never has to
give it time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from devtools.services.ports import LOOPBACK

__all__ = ["BLACK_HOLE", "CUT", "PASS", "ProxyStats", "TcpProxy"]

PASS, BLACK_HOLE, CUT = "pass", "black-hole", "cut"

T = TypeVar("T")


@dataclass
class ProxyStats:
    accepted: int = 0
    reset: int = 0  # connections reset by cut() or by the connection bound
    upstream_failures: int = 0  # connections whose target refused or failed
    bytes_forwarded: int = 0


class _Connection:
    """One client connection and its upstream; two pipes, each a reader and a writer task."""

    def __init__(self, proxy: TcpProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = (reader, writer)
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        proxy = self.proxy
        try:
            await proxy.wait_until_open()  # black hole: accepted, held until the mode changes
            if proxy.mode == CUT:
                self.reset()
                return
            try:
                self.upstream = await asyncio.open_connection(proxy.target_host, proxy.target_port)
            except OSError:
                proxy.stats.upstream_failures += 1
                self.reset()
                return
            self.tasks = [
                asyncio.ensure_future(self._pipe(self.client[0], self.upstream[1])),
                asyncio.ensure_future(self._pipe(self.upstream[0], self.client[1])),
            ]
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            self.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Read chunks into a bounded queue; write each once its latency has passed and the mode allows."""
        proxy = self.proxy
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=proxy.queue_chunks)

        async def read() -> None:
            try:
                while chunk := await source.read(proxy.chunk_bytes):
                    await queue.put((time.monotonic(), chunk))
            except (ConnectionError, OSError):
                self.reset()  # one side reset: so is the other, as when a peer vanishes
                return
            await queue.put((time.monotonic(), b""))  # EOF

        reader = asyncio.ensure_future(read())
        try:
            while True:
                read_at, chunk = await queue.get()
                while True:
                    await proxy.wait_until_open()
                    delay = read_at + proxy.latency_s - time.monotonic()
                    if delay <= 0:
                        break
                    await proxy.sleep_or_mode_change(delay)  # re-read the mode and latency after the wait
                if not chunk:
                    if sink.can_write_eof():
                        sink.write_eof()  # half-close: the other direction may still carry data
                    return
                sink.write(chunk)
                await sink.drain()
                proxy.stats.bytes_forwarded += len(chunk)
        except (ConnectionError, OSError):
            self.reset()
        finally:
            reader.cancel()

    def reset(self) -> None:
        """Abort both sides with an RST (SO_LINGER 0), as a peer that vanished would."""
        for pair in (self.client, self.upstream):
            if pair is not None:
                _abort(pair[1])
        for task in self.tasks:
            task.cancel()

    def close(self) -> None:
        for pair in (self.client, self.upstream):
            if pair is not None and not pair[1].is_closing():
                pair[1].close()


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`; see the module docstring for the modes."""

    def __init__(self, target_port: int, *, target_host: str = LOOPBACK, listen_port: int = 0,
                 max_connections: int = 256, chunk_bytes: int = 64 * 1024,
                 queue_chunks: int = 16) -> None:  # fmt: skip
        if target_host not in (LOOPBACK, "localhost"):
            raise ValueError(f"the chaos proxy forwards to loopback only, not {target_host!r}")
        self.target_host, self.target_port = target_host, target_port
        self.max_connections, self.chunk_bytes, self.queue_chunks = max_connections, chunk_bytes, queue_chunks
        self.stats = ProxyStats()
        self.mode = PASS
        self.latency_s = 0.0
        self._listen_port = listen_port
        self._port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._changed: asyncio.Event | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("TcpProxy.start() has not been called")
        return self._port

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        self._port = self._call(self._listen())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    # ---- modes (any thread) --------------------------------------------------------------------------

    def pass_through(self) -> None:
        self._set(PASS, 0.0)

    def add_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        self._set(PASS, seconds)

    def black_hole(self) -> None:
        self._set(BLACK_HOLE, self.latency_s)

    def cut(self) -> None:
        self._set(CUT, self.latency_s)

    def open_connections(self) -> int:
        return len(self._connections)

    def _set(self, mode: str, latency_s: float) -> None:
        async def apply() -> None:
            self.mode, self.latency_s = mode, latency_s
            if mode == CUT:
                for connection in list(self._connections):
                    connection.reset()
                    self.stats.reset += 1
            self._notify()

        self._call(apply())

    # ---- on the proxy's loop -------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def _listen(self) -> int:
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self._listen_port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        connection = _Connection(self, reader, writer)
        if self.mode == CUT or len(self._connections) >= self.max_connections:
            self.stats.reset += 1
            connection.reset()
            return
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    def _notify(self) -> None:
        """Wake every waiter to re-read the mode (a fresh event, so waiters need no clearing)."""
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until_open(self) -> None:
        while self.mode == BLACK_HOLE:
            assert self._changed is not None
            await self._changed.wait()

    async def sleep_or_mode_change(self, seconds: float) -> None:
        assert self._changed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self.mode = CUT
        self._notify()  # connections held by a black hole wake up, see CUT and end
        for connection in list(self._connections):
            connection.reset()
        # Let every connection's task end by itself, so stopping the loop leaves none pending.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
