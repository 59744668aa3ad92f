"""The read side of an upstream connection: bytes in, through llhttp, into the current exchange.

``ResponseReader`` is the base of ``proxy.upstream.connection.UpstreamConnection``: the
``asyncio.Protocol`` events that bring bytes or the end of the connection, and the llhttp
callbacks (through ``httptools``) that turn them into the answer of the exchange under way, a
``proxy.upstream.round_trip.RoundTrip``. Both lifetimes meet here:

* the connection's: the transport, the parser (llhttp keeps its state from one message to the
  next on a keep-alive connection), ``lost``, whether anything has ruled out pooling it
  (``_reusable``: a close, bytes after an answer, a timeout, an upgrade; never undone), and,
  after a ``101``, the bytes that are no longer HTTP (``_switched``);
* the exchange's: everything llhttp reads for one answer goes on ``_trip``, the object
  ``send_request`` made. Between exchanges there is none, and a byte read then is unsolicited.

The callbacks run only inside ``data_received``'s ``feed_data``, after it found an exchange that
is waiting for an answer; each binds ``_trip`` to a local once, so the hot path pays one
attribute look-up per callback for it. A failure inside a callback is raised as one of the private
exceptions below, which llhttp turns into an ``HttpParserError`` whose ``__context__`` says why.
"""

from __future__ import annotations

import asyncio
from typing import Final, cast

import httptools

from proxy.upstream.errors import UpstreamBrokenError, UpstreamError
from proxy.upstream.head import FRAMING_NAME_LENGTHS, MAX_HEAD_SIZE, ResponseHead
from proxy.upstream.round_trip import RoundTrip
from proxy.upstream.teardown import close_now

_HIGH_WATER: Final = 256 * 1024
"""Unread body bytes past which reading from the upstream pauses (a slow client)."""


class _NotConnected(asyncio.Transport):
    """The transport of a connection not made yet: closing it is a no-op."""

    def is_closing(self) -> bool:
        return True


_NOT_CONNECTED: Final = _NotConnected()


class ResponseReader(asyncio.Protocol):
    """Reads the upstream's answers, one exchange at a time, into the exchange's ``RoundTrip``."""

    def __init__(self) -> None:
        # --- the connection: as long as the socket -------------------------------------------
        # Set by connection_made, before anyone else can hold this connection.
        self._transport: asyncio.Transport = _NOT_CONNECTED
        self._parser = httptools.HttpResponseParser(self)
        self.lost = False
        self._reusable = True  # once False, never True again
        # The bytes after a 101's head, once llhttp has stopped at it (upgrade mode only).
        self._switched: bytes | None = None
        # --- the exchange: from send_request to end_exchange ---------------------------------
        self._trip: RoundTrip | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # a stream transport: TCP or Unix

    def data_received(self, data: bytes) -> None:
        if self._switched is not None:
            # Not HTTP any more, and not ours: kept, in order, for ``switch_protocol``. (Reading
            # paused at the switch, so this is only a guard.)
            self._switched += data
            return
        trip = self._trip
        if trip is None or trip.complete:
            # Nobody asked: a stale or confused upstream. Its next answer could not be trusted.
            self._break(UpstreamBrokenError("unsolicited_bytes"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp stops here after a 101 that carried ``Upgrade`` and ``Connection: upgrade``
            # (RFC 9110 §7.8); any other 101 is a parse error. Outside upgrade mode a 101 already
            # failed in on_headers_complete: this is a guard.
            if not trip.upgrade:
                self._break(UpstreamBrokenError("unexpected_upgrade"))
                return
            self._switch(trip, data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            reason = _PARSE_FAILURES.get(type(exc.__context__), "bad_response")
            self._break(UpstreamBrokenError(reason))
        else:
            if trip.head is None:
                # Counted after parsing, so that body bytes read together with the head are not.
                trip.head_bytes += len(data)
                if trip.head_bytes > MAX_HEAD_SIZE:
                    self._break(UpstreamBrokenError("response_head_too_large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._reusable = False
        trip = self._trip
        if trip is None:
            return
        if not trip.complete:
            head = trip.head
            if head is not None and head.is_ended_by_close:
                trip.complete = True
            elif trip.failure is None:
                closed = "closed_mid_body" if head is not None else "closed_before_answer"
                trip.failure = UpstreamBrokenError(closed)
        trip.wake()

    # --- httptools callbacks: only inside data_received's feed, so always with an exchange ---

    def on_message_begin(self) -> None:
        trip = self._trip
        if trip is None or trip.head is not None:
            # A second answer to one request (pipelining is never used upstream).
            raise _UnsolicitedError

    def on_status(self, reason: bytes) -> None:
        trip = self._trip
        if trip is None:
            raise _UnsolicitedError
        trip.parsed_head += len(reason)
        trip.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        trip = self._trip
        if trip is None:
            raise _UnsolicitedError
        trip.parsed_head += len(name) + len(value) + 4
        if trip.head is None:
            trip.headers.append((name, value))
            if len(name) in FRAMING_NAME_LENGTHS:
                trip.framing_candidates.append((name, value))
        # Trailer fields come here too, after the head: dropped, as aiohttp's client did.

    def on_headers_complete(self) -> None:
        trip = self._trip
        if trip is None:
            raise _UnsolicitedError
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (RFC 9110 §15.2: 100 Continue, 103 Early Hints): skipped; the final
            # answer follows on the same connection.
            trip.reason = b""
            trip.headers = []
            trip.framing_candidates = []
            return
        if status == 101 and not trip.upgrade:
            raise _UpgradeError
        if trip.parsed_head > MAX_HEAD_SIZE:
            raise _HeadTooLargeError
        if status == 101:
            # Upgrade mode: the head is given out only once llhttp confirms the switch
            # (``_switch``); a 101 without ``Connection: upgrade`` becomes a parse error instead.
            return
        trip.head = ResponseHead(
            status, trip.reason.decode("latin-1"), trip.headers, trip.framing_candidates
        )
        # Asked now: llhttp forgets the message's keep-alive state once it is complete.
        trip.keep_alive = parser.should_keep_alive()
        if trip.head_only:
            # RFC 9110 §9.3.2: an answer to HEAD has no content, whatever its framing says. llhttp
            # cannot be told through httptools, so the message ends here for us; a byte of body
            # after it means a broken upstream (``on_body``).
            trip.complete = True
        trip.wake()

    def on_body(self, body: bytes) -> None:
        trip = self._trip
        if trip is None:
            raise _UnsolicitedError
        if trip.complete:
            self._reusable = False
            return
        trip.chunks.append(body)
        trip.buffered += len(body)
        if trip.buffered > _HIGH_WATER and not trip.reading_paused:
            trip.reading_paused = True
            self._transport.pause_reading()
        trip.wake()

    def on_message_complete(self) -> None:
        trip = self._trip
        if trip is None or trip.head is None:
            return  # the end of an interim answer
        trip.complete = True
        trip.wake()

    # --- ending -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection, never to be pooled: the upstream sees it end at once."""
        self._reusable = False
        close_now(self._transport)

    def _switch(self, trip: RoundTrip, rest: bytes) -> None:
        """llhttp stopped after a 101's head: the HTTP part is over (``switch_protocol``)."""
        self._transport.pause_reading()
        self._switched = rest
        status = self._parser.get_status_code()
        trip.head = ResponseHead(
            status, trip.reason.decode("latin-1"), trip.headers, trip.framing_candidates
        )
        trip.complete = True
        trip.wake()

    def _break(self, failure: UpstreamError) -> None:
        """The upstream cannot be trusted any more: fail the exchange, if any, and close."""
        trip = self._trip
        if trip is not None and trip.failure is None:
            trip.failure = failure
        self.close()
        if trip is not None:
            trip.wake()


class _UpgradeError(Exception):
    """Raised inside a parser callback: a 101 to a request that asked for no upgrade."""


class _HeadTooLargeError(Exception):
    """Raised inside a parser callback: the head grew past ``MAX_HEAD_SIZE`` in one read."""


class _UnsolicitedError(Exception):
    """Raised inside a parser callback to stop parsing an answer nobody asked for."""


_PARSE_FAILURES: Final[dict[type[object], str]] = {
    _HeadTooLargeError: "response_head_too_large",
    _UpgradeError: "unexpected_upgrade",
    _UnsolicitedError: "unsolicited_bytes",
}
"""What a parse error raised from one of the callbacks above means, by its ``__context__``."""
