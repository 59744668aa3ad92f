"""The client side of the proxy: plain HTTP/1.1 connections to the one upstream.

They are pooled by ``proxy.upstream.pool``.

Theory of operation
-------------------
A reverse proxy needs very little of an HTTP client: one origin, one request at a time per
connection, no redirects, cookies, decompression, proxies or retries. aiohttp's ``ClientSession``
gives all of those and had to be configured to undo most of them; it also cost about 125 µs of
the proxy's 290 µs per request (README, "Where hangup's time goes"). So the proxy speaks HTTP/1.1
to its upstream itself, with llhttp (through ``httptools``, the parser uvicorn uses) doing the
parsing:

* ``UpstreamConnection`` is an ``asyncio.Protocol``. ``data_received`` feeds the parser, whose
  callbacks collect the status line and header fields, then queue body chunks. The exchange
  awaits ``response_head`` and then ``read_body`` for each chunk; a chunk that is already here is
  returned without a wait, so a small answer that arrives in one segment costs no extra loop turn.
* Back-pressure: past ``_HIGH_WATER`` unread body bytes (a slow client), reading from the upstream
  socket pauses until the exchange has taken them, so memory stays bounded per exchange.
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
  (``_send_fin_now``), so the client connection's own callbacks can end the exchange's upstream
  connection without waiting for the cancelled task, or the loop, to run
  (``proxy.serving.forward``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Final, cast

import httptools

from proxy.edge.coalesce import EndOfTurn

_HIGH_WATER: Final = 256 * 1024
"""Unread body bytes past which reading from the upstream pauses (a slow client)."""

MAX_HEAD_SIZE: Final = 64 * 1024
"""Largest response head accepted from the upstream: llhttp has no limit of its own, and httptools
collects a field across reads, so a broken upstream could otherwise grow one without bound."""


class _NotConnected(asyncio.Transport):
    """The transport of a connection not made yet: closing it is a no-op."""

    def is_closing(self) -> bool:
        return True


_NOT_CONNECTED: Final = _NotConnected()


class UpstreamError(Exception):
    """The upstream could not be reached, or failed the exchange; ``reason`` is for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamConnectError(UpstreamError):
    """No connection: refused, unreachable, or not within ``--connect-timeout`` (502)."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream was silent for ``--upstream-timeout`` (504)."""


class UpstreamBrokenError(UpstreamError):
    """The upstream closed early or answered something that is not HTTP/1.1 (502)."""


class ResponseHead:
    """The status line and header fields of the upstream's (final) answer, and its framing."""

    __slots__ = ("chunked", "content_length", "raw_headers", "reason", "status")

    def __init__(self, status: int, reason: str, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers
        # How llhttp framed the body (RFC 9112 §6.3), which is what the client is told: it refused
        # a repeated or non-numeric Content-Length, and Transfer-Encoding overrides one (rule 3).
        length: int | None = None
        last_coding: bytes | None = None
        for name, value in raw_headers:
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                last_coding = value.rpartition(b",")[2].strip().lower()
            elif lowered == b"content-length":
                length = int(value)
        self.chunked = last_coding == b"chunked"
        self.content_length = length if last_coding is None else None


class UpstreamConnection(asyncio.Protocol):
    """One TCP or Unix connection to the upstream, carrying one exchange at a time."""

    def __init__(self, read_timeout: float, heads: EndOfTurn) -> None:
        self._read_timeout = read_timeout
        self._heads = heads
        self._waiting_head: bytes | None = None
        self._loop = asyncio.get_running_loop()
        # Set by connection_made, before anyone else can hold this connection.
        self._transport: asyncio.Transport = _NOT_CONNECTED
        self.lost = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._in_exchange = False
        self._head_only = False
        self._upgrade = False
        # The bytes after a 101's head, once llhttp has stopped at it (upgrade mode only).
        self._switched: bytes | None = None
        self._head: ResponseHead | None = None
        # The head's size is counted twice over, against MAX_HEAD_SIZE: ``_head_bytes`` (bytes
        # read while the head is unfinished) catches a head that grows across reads, even inside
        # one endless field that llhttp has not handed over yet; ``_parsed_head`` (the fields
        # llhttp handed over) catches a whole oversized head read at once together with body
        # bytes, which must not count, so it is checked inside the parse (on_headers_complete).
        self._head_bytes = 0
        self._parsed_head = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._failure: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reusable = True
        self._request_sent = False
        self._reading_paused = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # a stream transport: TCP or Unix

    def data_received(self, data: bytes) -> None:
        if self._switched is not None:
            # Not HTTP any more, and not ours: kept, in order, for ``switch_protocol``. (Reading
            # paused at the switch, so this is only a guard.)
            self._switched += data
            return
        if not self._in_exchange or self._complete:
            # Nobody asked: a stale or confused upstream. Its next answer could not be trusted.
            self._break(UpstreamBrokenError("unsolicited_bytes"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp stops here after a 101 that carried ``Upgrade`` and ``Connection: upgrade``
            # (RFC 9110 §7.8); any other 101 is a parse error. Outside upgrade mode a 101 already
            # failed in on_headers_complete: this is a guard.
            if not self._upgrade:
                self._break(UpstreamBrokenError("unexpected_upgrade"))
                return
            self._switch(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLargeError):
                self._break(UpstreamBrokenError("response_head_too_large"))
                return
            if isinstance(exc.__context__, _UpgradeError):
                self._break(UpstreamBrokenError("unexpected_upgrade"))
                return
            unsolicited = isinstance(exc.__context__, _UnsolicitedError)
            self._break(UpstreamBrokenError("unsolicited_bytes" if unsolicited else "bad_response"))
        else:
            if self._head is None:
                # Counted after parsing, so that body bytes read together with the head are not.
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_SIZE:
                    self._break(UpstreamBrokenError("response_head_too_large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._reusable = False
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self._in_exchange and not self._complete:
            if self._head is not None and self._ends_at_close(self._head):
                # RFC 9112 §6.3 rule 8: no length and not chunked, so the close ends the body.
                self._complete = True
            elif self._failure is None:
                closed = "closed_mid_body" if self._head is not None else "closed_before_answer"
                self._failure = UpstreamBrokenError(closed)
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._head is not None:
            # A second answer to one request (pipelining is never used upstream).
            raise _UnsolicitedError

    def on_status(self, reason: bytes) -> None:
        self._parsed_head += len(reason)
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_head += len(name) + len(value) + 4
        if self._head is None:
            self._headers.append((name, value))
        # Trailer fields come here too, after the head: dropped, as aiohttp's client did.

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (RFC 9110 §15.2: 100 Continue, 103 Early Hints): skipped; the final
            # answer follows on the same connection.
            self._reason = b""
            self._headers = []
            return
        if status == 101 and not self._upgrade:
            raise _UpgradeError
        if self._parsed_head > MAX_HEAD_SIZE:
            raise _HeadTooLargeError
        if status == 101:
            # Upgrade mode: the head is given out only once llhttp confirms the switch
            # (``_switch``); a 101 without ``Connection: upgrade`` becomes a parse error instead.
            return
        self._head = ResponseHead(status, self._reason.decode("latin-1"), self._headers)
        # Asked now: llhttp forgets the message's keep-alive state once it is complete.
        self._keep_alive = self._parser.should_keep_alive()
        if self._head_only:
            # RFC 9110 §9.3.2: an answer to HEAD has no content, whatever its framing says. llhttp
            # cannot be told through httptools, so the message ends here for us; a byte of body
            # after it means a broken upstream (``on_body``).
            self._complete = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._reusable = False
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._head is None:
            return  # the end of an interim answer
        self._complete = True
        self._wake()

    # --- the exchange's side ----------------------------------------------------------------

    def send_request(
        self, head: bytes, *, head_only: bool, body_follows: bool, upgrade: bool = False
    ) -> None:
        """Write the request head and get ready for the answer (``head_only``: a HEAD request).

        With ``body_follows``, the request counts as sent once ``request_sent`` is called. With
        ``upgrade`` (a WebSocket handshake), a ``101`` is the answer and ends the HTTP part of the
        connection (``switch_protocol``); other interim answers (100, 103) are skipped before it
        as before any answer (RFC 9110 §15.2). Such a connection is never pooled.
        """
        self._in_exchange = True
        self._head_only = head_only
        self._upgrade = upgrade
        if upgrade:
            self._reusable = False
        self._request_sent = not body_follows
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
        self._request_sent = True
        # A wait that began during the upload is untimed: wake it so it waits again, timed.
        self._wake()

    @property
    def closing(self) -> bool:
        return self._transport.is_closing()

    @property
    def head(self) -> ResponseHead | None:
        """The answer's head, once it arrived."""
        return self._head

    async def response_head(self) -> ResponseHead:
        """The answer's head, once it is here (timed once the whole request is written)."""
        while self._head is None:
            if self._failure is not None:
                raise self._failure
            await self._wait()
        if self._failure is not None and not self._complete:
            # The body broke in the very read that brought the head: nothing has reached the
            # client yet, so it can still be told with a 502 instead of a cut.
            raise self._failure
        return self._head

    async def head_or_end_of(self, upload: asyncio.Task[None]) -> None:
        """Wait, untimed, until the answer's head arrives, the connection fails, or ``upload`` ends.

        An upstream may answer before it has read the whole request (RFC 9112 §9.3); the
        exchange then relays that answer rather than wait for an upload nobody reads.
        """
        while self._head is None and self._failure is None and not upload.done():
            waiter = self._waiter = self._loop.create_future()
            wake: Callable[[object], None] = lambda _: self._wake()  # noqa: E731
            upload.add_done_callback(wake)
            try:
                await waiter
            finally:
                self._waiter = None
                upload.remove_done_callback(wake)

    async def read_body(self) -> bytes:
        """The next body bytes (everything already here, joined); ``b""`` once the body ended."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._failure is not None:
                raise self._failure
            await self._wait()
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._reading_paused and not self.lost:
            self._reading_paused = False
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
        if switched is None or self._head is None or self._head.status != 101:
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

    @property
    def reusable(self) -> bool:
        """True when the last exchange ended cleanly and both sides will keep the connection."""
        return (
            self._reusable
            and not self.lost
            and self._complete
            and self._request_sent
            and not self._chunks
            and self._keep_alive
        )

    def reset(self) -> None:
        """Forget the finished exchange so the connection can carry the next one."""
        if self._head_only:
            # An answer to HEAD may have left llhttp waiting for a body it never gets: a fresh
            # parser. After any other complete answer llhttp is ready for the next one.
            self._parser = httptools.HttpResponseParser(self)
        self._in_exchange = False
        self._head = None
        self._head_bytes = 0
        self._parsed_head = 0
        self._reason = b""
        self._headers = []
        self._complete = False

    def close(self) -> None:
        """Close the connection, never to be pooled: the upstream sees it end at once."""
        self._reusable = False
        self._waiting_head = None
        transport = self._transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size():
            # close() would first wait to flush a request the upstream is not reading.
            transport.abort()
        else:
            transport.close()
        _send_fin_now(transport)

    # --- internals --------------------------------------------------------------------------

    def _ends_at_close(self, head: ResponseHead) -> bool:
        """RFC 9112 §6.3: a body with no Content-Length whose last coding is not chunked."""
        if head.status in (204, 304):
            return False
        return head.content_length is None and not head.chunked

    def _switch(self, rest: bytes) -> None:
        """llhttp stopped after a 101's head: the HTTP part is over (``switch_protocol``)."""
        self._transport.pause_reading()
        self._switched = rest
        status = self._parser.get_status_code()
        self._head = ResponseHead(status, self._reason.decode("latin-1"), self._headers)
        self._complete = True
        self._wake()

    def _break(self, failure: UpstreamError) -> None:
        if self._failure is None:
            self._failure = failure
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        timer = (
            self._loop.call_later(self._read_timeout, self._time_out, waiter)
            if self._request_sent
            else None
        )
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._reusable = False
            waiter.set_exception(UpstreamTimeoutError("upstream_read_timeout"))


class _UpgradeError(Exception):
    """Raised inside a parser callback: a 101 to a request that asked for no upgrade."""


class _HeadTooLargeError(Exception):
    """Raised inside a parser callback: the head grew past ``MAX_HEAD_SIZE`` in one read."""


class _UnsolicitedError(Exception):
    """Raised inside a parser callback to stop parsing an answer nobody asked for."""


def _send_fin_now(transport: asyncio.Transport) -> None:
    """Shut the socket down at once, so the upstream sees the connection end in this turn.

    Neither uvloop nor asyncio closes a socket in ``transport.close()`` or ``abort()``: both
    schedule ``connection_lost`` with ``call_soon`` and close the descriptor there, behind every
    callback already queued. Under load that queue is most of a loop turn (about 1 ms at the
    benchmark's load), all of it added to a hang-up's propagation. ``shutdown`` sends the FIN now;
    the descriptor is still closed by the loop, once. The descriptor is wrapped without a ``dup``
    and detached again, so this ``socket`` object never closes it.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    descriptor = sock.fileno()
    if descriptor < 0:
        return
    with contextlib.suppress(OSError):
        wrapper = socket.socket(sock.family, sock.type, fileno=descriptor)
        try:
            wrapper.shutdown(socket.SHUT_RDWR)
        finally:
            wrapper.detach()
