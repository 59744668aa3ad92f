"""Writes coalesced per turn of the event loop: what one turn writes leaves together, at its end.

On this kind of machine (a 2-core VM) a loopback socket write that has to wake a sleeping reader
on the other core costs about 16 µs, one whose reader is already running about 7 µs (a ping-pong
of 1 KiB messages). A proxy under load answers many clients and asks its upstream many questions
in one turn of its loop; written as each is ready, every write is a separate wake-up of the peer.
Written back to back at the end of the turn, the first wakes the peer and the rest find it
running. ``EndOfTurn`` is that end-of-turn callback, shared by everything that holds writes:

* ``CoalescingTransport`` sits between aiohttp's request handler and a client connection's real
  transport (+9 % requests/s at 1 KiB under the benchmark's load, measured A/B twice);
* ``proxy.upstream.connection.UpstreamConnection`` holds the head of a bodiless request the same way
  (+15 %).

The price is latency: a write waits for the rest of the current turn's callbacks, which is
nothing when idle and a fraction of a turn under load. Nothing is held longer than that turn:
streaming answers (server-sent events) still leave as they are produced.

For ``CoalescingTransport`` everything but writes goes straight to the real transport. ``close``
and ``write_eof`` first write what is waiting, so nothing is reordered or lost; ``abort`` drops it,
as the real ``abort`` drops its own buffer; a connection that closed meanwhile drops it too.
Back-pressure is unchanged: ``get_write_buffer_size`` counts the waiting bytes, and the real
transport pauses the protocol once the bytes reach it, at most one turn later.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class Flushable(Protocol):
    def flush(self) -> None:
        """Write what is waiting."""


class EndOfTurn:
    """Everything with writes waiting in this turn, flushed by one ``call_soon`` callback."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: list[Flushable] = []

    def add(self, flushable: Flushable) -> None:
        if not self._waiting:
            self._loop.call_soon(self._flush_all)
        self._waiting.append(flushable)

    def _flush_all(self) -> None:
        waiting, self._waiting = self._waiting, []
        for flushable in waiting:
            flushable.flush()


class CoalescingTransport(asyncio.Transport):
    """A client connection's transport whose writes wait for the end of the loop's turn."""

    def __init__(self, real: asyncio.Transport, batch: EndOfTurn) -> None:
        super().__init__()
        self._real = real
        self._batch = batch
        self._waiting: list[bytes] = []
        self._waiting_size = 0

    # --- writes: held for the turn ---------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        if not data:
            return
        if not self._waiting:
            self._batch.add(self)
        # A bytearray or memoryview may be reused by the writer once this returns.
        chunk = data if isinstance(data, bytes) else bytes(data)
        self._waiting.append(chunk)
        self._waiting_size += len(chunk)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write what is waiting, unless the connection is already closing (then it is dropped)."""
        waiting, self._waiting = self._waiting, []
        self._waiting_size = 0
        if waiting and not self._real.is_closing():
            self._real.writelines(waiting)

    def close(self) -> None:
        self.flush()
        self._real.close()

    def write_eof(self) -> None:
        self.flush()
        self._real.write_eof()

    def abort(self) -> None:
        self._waiting = []
        self._waiting_size = 0
        self._real.abort()

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size() + self._waiting_size

    # --- everything else: the real transport's ---------------------------------------------

    def is_closing(self) -> bool:
        return self._real.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._real.get_extra_info(name, default)

    def can_write_eof(self) -> bool:
        return self._real.can_write_eof()

    def pause_reading(self) -> None:
        self._real.pause_reading()

    def resume_reading(self) -> None:
        self._real.resume_reading()

    def is_reading(self) -> bool:
        return self._real.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._real.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._real.get_protocol()
