"""The upstream for hang-up timing: holds probe requests and notes when their connection ends.

It runs inside the benchmark driver, so the probe client's close and this origin's end-of-
connection are timed by one clock in one process. ``GET /hold?id=N`` is never answered: the
origin marks probe N as arrived and waits; the moment that connection ends, by EOF (the proxy
closed or shut down its upstream socket) or by a reset (the proxy aborted it, or, with no proxy,
the probe client's own RST), it records ``time.perf_counter()`` for N, once: whichever end the
connection reports first. Every other request gets the same 1 KiB answer at once, so wrk can
load the proxy through this origin while probes run.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from benchmarks.processes import LOOPBACK

_BODY = b"x" * 1024
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)
_PROBE_PREFIX = b"GET /hold?id="


class HoldOrigin:
    """Probe bookkeeping, shared by every connection the origin accepts."""

    def __init__(self) -> None:
        self.arrived: dict[int, asyncio.Event] = {}
        self.ended: dict[int, asyncio.Event] = {}
        self.ended_at: dict[int, float] = {}
        self.connections: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on a free loopback port; return it."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), LOOPBACK, 0, backlog=4096
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def expect(self, probe_id: int) -> None:
        """Get ready to see probe ``probe_id`` (before its request is sent)."""
        self.arrived[probe_id] = asyncio.Event()
        self.ended[probe_id] = asyncio.Event()

    def forget(self, probe_id: int) -> None:
        self.arrived.pop(probe_id, None)
        self.ended.pop(probe_id, None)
        self.ended_at.pop(probe_id, None)

    def probe_arrived(self, probe_id: int) -> None:
        event = self.arrived.get(probe_id)
        if event is not None:
            event.set()

    def probe_ended(self, probe_id: int, at: float) -> None:
        event = self.ended.get(probe_id)
        if event is not None and not event.is_set():
            self.ended_at[probe_id] = at
            event.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        # Pooled upstream connections of the proxies are still open; close them from this side.
        for transport in list(self.connections):
            transport.close()


class _Connection(asyncio.Protocol):
    def __init__(self, origin: HoldOrigin) -> None:
        self._origin = origin
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._holding: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is not a subclass of asyncio.Transport, so no isinstance).
        self._transport = cast(asyncio.Transport, transport)
        self._origin.connections.add(self._transport)

    def data_received(self, data: bytes) -> None:
        if self._holding is not None:
            return
        buffer = self._buffer + data
        # Requests carry no body (GET only), so each ends at its blank line; pipelining allowed.
        while (end := buffer.find(b"\r\n\r\n")) != -1:
            head, buffer = buffer[:end], buffer[end + 4 :]
            if head.startswith(_PROBE_PREFIX):
                self._holding = int(head[len(_PROBE_PREFIX) : head.index(b" ", len(_PROBE_PREFIX))])
                self._origin.probe_arrived(self._holding)
                buffer = b""
                break
            assert self._transport is not None  # noqa: S101 - set in connection_made
            self._transport.write(ANSWER)
        self._buffer = buffer

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # A reset arrives only here (exc is a ConnectionResetError), and both asyncio and uvloop
        # deliver it by a queued callback, a little after the read that saw it; an EOF was timed
        # already in eof_received, and probe_ended keeps that first time.
        self._ended()
        if self._transport is not None:
            self._origin.connections.discard(self._transport)

    def _ended(self) -> None:
        if self._holding is not None:
            self._origin.probe_ended(self._holding, time.perf_counter())
