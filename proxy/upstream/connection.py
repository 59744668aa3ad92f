"""The client side of the proxy: plain HTTP/1.1 connections to the one upstream.

They are pooled by ``proxy.upstream.pool``.

Theory of operation
-------------------
A reverse proxy needs very little of an HTTP client: one origin, one request at a time per
connection, no redirects, cookies, decompression, proxies or retries. aiohttp's ``ClientSession``
gives all of those and had to be configured to undo most of them; it also cost about 125 µs of
the proxy's 290 µs per request (README, "Where hangup's time goes"). So the proxy speaks HTTP/1.1
to its upstream itself, with llhttp (through ``httptools``, the parser uvicorn uses) doing the
parsing.

Two lifetimes, two objects (as uvicorn's ``HttpToolsProtocol`` and ``RequestResponseCycle``):

* ``UpstreamConnection`` lives as long as the socket. It owns the transport and its write flow
  control, the request head held for the end of the turn, pool membership (``idle_timer``), and
  ``reusable``'s verdict. Its read side, ``proxy.upstream.reader.ResponseReader`` (its base
  class), owns the llhttp parser and its callbacks, ``lost``, whether anything has ruled out
  pooling the connection (a close, a timeout, bytes after an answer, an upgrade: never undone),
  and, after a ``101``, the bytes that are no longer HTTP, kept for ``switch_protocol``.
* ``proxy.upstream.round_trip.RoundTrip`` lives as long as one exchange: made by
  ``send_request``, dropped whole by ``end_exchange`` (the pool's ``release``), with no reset. It
  owns what the request asked for (HEAD, upgrade), whether it is all written, the answer's head
  as llhttp reads it, the unread body and whether reading paused for it, the answer's completion
  or failure, and the exchange's one waiter. Between exchanges a connection has none, and a byte
  read then is unsolicited.

How an exchange goes:

* ``data_received`` feeds the parser, whose callbacks collect the status line and header fields,
  then queue body chunks, on the exchange's ``RoundTrip``. The exchange awaits ``response_head``
  and then ``read_body`` for each chunk; a chunk that is already here is returned without a wait,
  so a small answer that arrives in one segment costs no extra loop turn.
* Back-pressure: past ``_HIGH_WATER`` unread body bytes (``proxy.upstream.reader``; a slow
  client), reading from the upstream socket pauses until the exchange has taken them, so memory
  stays bounded per exchange.
* One read timeout (``--upstream-timeout``) bounds every wait for the upstream: for its head once
  the request has been written, and each gap between body chunks. The clock runs only while the
  exchange is waiting and reading is not paused, so a slow upload or a slow reader is never blamed
  on the upstream.
* A connection goes back to the pool only after a whole answer was read, the whole request was
  written, and both sides said keep-alive; anything else (a hang-up, a timeout, a parse error, an
  answer to a HEAD that carried body bytes, an unsolicited byte while idle) closes it. Nothing is
  ever retried: a request that may have reached the upstream is never sent twice.
* A WebSocket handshake (``proxy.websocket.tunnels``) uses a connection of its own, never pooled, in
  upgrade mode (``send_request(..., upgrade=True)``), where a ``101`` is the answer it asked for
  rather than an error. llhttp reports the switch by stopping at the end of the head
  (``HttpParserUpgrade``, whose argument is the offset of the first byte it did not parse); from
  there on the bytes are the new protocol's. Reading pauses in that very read, so the bytes after
  the head in it are all there is until ``switch_protocol`` hands them, then the transport, to the
  tunnel's protocol.
* ``UpstreamConnection.close`` is synchronous, and the FIN leaves inside the call
  (``proxy.upstream.teardown``), so the client connection's own callbacks can end the exchange's
  upstream connection without waiting for the cancelled task, or the loop, to run
  (``proxy.serving.forward``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools

from proxy.edge.coalesce import EndOfTurn
from proxy.upstream.errors import (
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
)
from proxy.upstream.head import MAX_HEAD_SIZE, ResponseHead
from proxy.upstream.reader import ResponseReader
from proxy.upstream.round_trip import RoundTrip

# Where callers have always found them (``proxy.serving``, ``proxy.websocket``, ``proxy.exchange``).
__all__ = [
    "MAX_HEAD_SIZE",
    "ResponseHead",
    "UpstreamBrokenError",
    "UpstreamConnectError",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamTimeoutError",
]


class UpstreamConnection(ResponseReader):
    """One TCP or Unix connection to the upstream, carrying one exchange at a time.

    The read side (transport events, llhttp callbacks) is ``ResponseReader``'s; this adds the
    exchange's side: writing the request, waiting for the answer, and the pool's hooks.
    """

    def __init__(self, read_timeout: float, heads: EndOfTurn) -> None:
        super().__init__()
        # --- configuration -------------------------------------------------------------------
        self._read_timeout = read_timeout
        self._heads = heads
        self._loop = asyncio.get_running_loop()
        # --- the connection: as long as the socket -------------------------------------------
        self.idle_timer: asyncio.TimerHandle | None = None
        """The pool's keep-alive timer, set the first time the connection went idle since it
        last fired (``proxy.upstream.pool``)."""
        self.idle_since = 0.0
        """Loop time at which the connection last went back to the pool."""
        self.pooled = False
        """True while the connection is idle in the pool."""
        self._waiting_head: bytes | None = None  # a request head held for the end of the turn
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        # The read timeout (``_wait``): the timed wait under way, since when, and the one timer.
        self._timed_waiter: asyncio.Future[None] | None = None
        self._timed_since = 0.0
        self._read_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self._read_timer is not None:
            self._read_timer.cancel()
        super().connection_lost(exc)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # --- the exchange's side ----------------------------------------------------------------

    def send_request(
        self, head: bytes, *, head_only: bool, body_follows: bool, upgrade: bool = False
    ) -> None:
        """Start an exchange: write the request head and get ready for the answer
        (``head_only``: a HEAD request).

        With ``body_follows``, the request counts as sent once ``request_sent`` is called. With
        ``upgrade`` (a WebSocket handshake), a ``101`` is the answer and ends the HTTP part of the
        connection (``switch_protocol``); other interim answers (100, 103) are skipped before it
        as before any answer (RFC 9110 §15.2). Such a connection is never pooled.
        """
        self._trip = RoundTrip(
            head_only, upgrade, not body_follows
        )  # request_sent: no body to wait for
        if upgrade:
            self._reusable = False
        if body_follows:
            # The upload follows at once, and its timing against an early answer is delicate
            # (``send_body``): only bodiless requests, the bulk of the traffic, wait for the turn.
            self._transport.write(head)
            return
        # Written at the end of this turn with the other heads of the turn (proxy.edge.coalesce); a
        # connection closed meanwhile (its client hung up) drops its head unsent.
        self._waiting_head = head
        self._heads.add(self)

    def flush(self) -> None:
        """Write the request head that ``send_request`` left for the end of the turn, if any."""
        head, self._waiting_head = self._waiting_head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    async def send_body(self, data: bytes) -> None:
        """Write part of the request body, waiting while the upstream's socket is full."""
        # One loop turn first: an answer already read from the socket (an early 413 followed by
        # a close) must reach on_body before a write into the reset socket makes asyncio's
        # transport drop its reader with that answer unread.
        await asyncio.sleep(0)
        if self.lost:
            raise UpstreamBrokenError("closed_during_upload")
        self._transport.write(data)
        if self._write_paused:
            self._drained = self._loop.create_future()
            try:
                async with asyncio.timeout(self._read_timeout):
                    await self._drained
            except TimeoutError:
                # An upstream that stopped reading the upload: 504, as nginx's proxy_send_timeout.
                self._reusable = False
                raise UpstreamTimeoutError("upstream_write_timeout") from None
            self._drained = None
            if self.lost:
                raise UpstreamBrokenError("closed_during_upload")

    def request_sent(self) -> None:
        """The whole request is written: from now on the upstream's silence is timed."""
        trip = self._trip
        if trip is None:
            raise _no_exchange()
        trip.request_sent = True
        # A wait that began during the upload is untimed: wake it so it waits again, timed.
        trip.wake()

    @property
    def closing(self) -> bool:
        return self._transport.is_closing()

    @property
    def head(self) -> ResponseHead | None:
        """The answer's head, once it arrived (``None`` also between exchanges)."""
        trip = self._trip
        return None if trip is None else trip.head

    async def response_head(self) -> ResponseHead:
        """The answer's head, once it is here (timed once the whole request is written)."""
        trip = self._trip
        if trip is None:
            raise _no_exchange()
        while (head := trip.head) is None:
            if trip.failure is not None:
                raise trip.failure
            await self._wait(trip)
        if trip.failure is not None and not trip.complete:
            # The body broke in the very read that brought the head: nothing has reached the
            # client yet, so it can still be told with a 502 instead of a cut.
            raise trip.failure
        return head

    async def head_or_end_of(self, upload: asyncio.Task[None]) -> None:
        """Wait, untimed, until the answer's head arrives, the connection fails, or ``upload`` ends.

        An upstream may answer before it has read the whole request (RFC 9112 §9.3); the
        exchange then relays that answer rather than wait for an upload nobody reads.
        """
        trip = self._trip
        if trip is None:
            raise _no_exchange()
        wake: Callable[[object], None] = lambda _: trip.wake()  # noqa: E731
        while trip.head is None and trip.failure is None and not upload.done():
            waiter = trip.waiter = self._loop.create_future()
            upload.add_done_callback(wake)
            try:
                await waiter
            finally:
                trip.waiter = None
                upload.remove_done_callback(wake)

    def whole_body(self, length: int) -> bytes | None:
        """The answer's whole body when all ``length`` bytes of it are here and none was read
        yet; else ``None``, and nothing is taken.

        The common case, a small answer whose head and body came in one read: the caller can
        write it to the client in one piece instead of streaming it (``proxy.serving.forward``).
        """
        trip = self._trip
        if trip is None or not trip.complete or trip.failure is not None or trip.buffered != length:
            return None
        return trip.take_body()

    async def read_body(self) -> bytes:
        """The next body bytes (everything already here, joined); ``b""`` once the body ended."""
        trip = self._trip
        if trip is None:
            raise _no_exchange()
        while not trip.chunks:
            if trip.complete:
                return b""
            if trip.failure is not None:
                raise trip.failure
            await self._wait(trip)
        data = trip.take_body()
        if trip.reading_paused and not self.lost:
            trip.reading_paused = False
            self._transport.resume_reading()
        return data

    def switch_protocol(self, protocol: asyncio.Protocol) -> asyncio.Transport:
        """After a ``101`` in upgrade mode: the transport and all unparsed bytes go to ``protocol``.

        ``protocol`` sees what it would have seen had it been the connection's protocol from the
        switch on: ``connection_made``, the bytes that followed the head in its read, then, once
        reading resumes, everything read later (or the end of the connection). The bytes are
        handed over before reading resumes, so nothing can overtake them.
        """
        switched = self._switched
        head = self.head
        if switched is None or head is None or head.status != 101:
            raise RuntimeError("switch_protocol without a 101 in upgrade mode")
        self._switched = b""  # anything that still reached this protocol would be kept, not lost
        transport = self._transport
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._write_paused:
            protocol.pause_writing()  # its resume_writing will come to the new protocol
        if switched:
            protocol.data_received(switched)
        if self.lost:
            protocol.connection_lost(None)
        else:
            transport.resume_reading()
        return transport

    # --- the pool's side --------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """True when the exchange ended cleanly and both sides will keep the connection."""
        trip = self._trip
        return (
            trip is not None
            and self._reusable
            and not self.lost
            and trip.complete
            and trip.request_sent
            and not trip.chunks
            and trip.keep_alive
        )

    def end_exchange(self) -> None:
        """Drop the finished exchange whole, so that the connection can carry the next one."""
        trip, self._trip = self._trip, None
        if trip is not None and trip.head_only:
            # An answer to HEAD may have left llhttp waiting for a body it never gets: a fresh
            # parser. After any other complete answer llhttp is ready for the next one.
            self._parser = httptools.HttpResponseParser(self)

    def close(self) -> None:
        """Close the connection, never to be pooled: the upstream sees it end at once."""
        self._waiting_head = None  # a head held for the end of the turn is never sent
        super().close()

    # --- internals --------------------------------------------------------------------------

    async def _wait(self, trip: RoundTrip) -> None:
        """Wait until something the exchange may be waiting for happens (``RoundTrip.wake``)."""
        loop = self._loop
        waiter = trip.waiter = loop.create_future()
        if trip.request_sent:
            # Timed. The read timer is not made and cancelled for every wait (issue 16, as the
            # pool's keep-alive timer): one is set when none is, and when it fires it looks at
            # whether a timed wait has lasted the whole timeout (``_check_read_timeout``).
            self._timed_waiter = waiter
            self._timed_since = now = loop.time()
            if self._read_timer is None:
                self._read_timer = loop.call_at(now + self._read_timeout, self._check_read_timeout)
        try:
            await waiter
        finally:
            trip.waiter = None
            self._timed_waiter = None

    def _check_read_timeout(self) -> None:
        self._read_timer = None
        waiter = self._timed_waiter
        if waiter is None or waiter.done() or self.lost:
            return  # no timed wait now: the next one sets a timer again
        expires = self._timed_since + self._read_timeout
        if self._loop.time() < expires:
            self._read_timer = self._loop.call_at(expires, self._check_read_timeout)
            return
        self._reusable = False
        waiter.set_exception(UpstreamTimeoutError("upstream_read_timeout"))


def _no_exchange() -> RuntimeError:
    return RuntimeError("no exchange on this upstream connection: call send_request first")
