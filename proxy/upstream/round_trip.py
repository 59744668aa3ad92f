"""One exchange on an upstream connection: a request written, and the answer read for it.

``proxy.upstream.connection`` makes a ``RoundTrip`` when a request is sent and drops it whole when
the exchange ends (``UpstreamConnection.end_exchange``, from the pool's ``release``), so nothing
of one exchange can leak into the next: there is no reset to forget a field in. What outlives the
exchange (the transport, the parser, whether the connection may still be pooled) stays on the
connection.

The object is plain state with ``__slots__``, filled in by the connection's llhttp callbacks and
read by the exchange's side of the connection: one small allocation per exchange, and the
callbacks bind it to a local so each field costs one slot look-up.
"""

from __future__ import annotations

import asyncio

from proxy.upstream.errors import UpstreamError
from proxy.upstream.head import ResponseHead


class RoundTrip:
    """The state of the exchange a connection carries now: its request, and the answer so far."""

    __slots__ = (
        "buffered",
        "chunks",
        "complete",
        "failure",
        "framing_candidates",
        "head",
        "head_bytes",
        "head_only",
        "headers",
        "keep_alive",
        "parsed_head",
        "reading_paused",
        "reason",
        "request_sent",
        "upgrade",
        "waiter",
    )

    def __init__(self, head_only: bool, upgrade: bool, request_sent: bool) -> None:
        # Positional on purpose: made once per exchange, and a call by keyword costs about 140 ns
        # more here (CPython 3.11), most of what making the object costs.
        # --- the request ---------------------------------------------------------------------
        self.head_only = head_only
        """An answer to HEAD: it has no content, whatever its framing says (RFC 9110 §9.3.2)."""
        self.upgrade = upgrade
        """A WebSocket handshake: a ``101`` is the answer asked for, not an error."""
        self.request_sent = request_sent
        """The whole request is written: from then on the upstream's silence is timed."""

        # --- the answer's head, while llhttp reads it -----------------------------------------
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.framing_candidates: list[tuple[bytes, bytes]] = []
        """Those of ``headers`` whose names are as long as a framing one (``ResponseHead``)."""
        # The head's size is counted twice over, against MAX_HEAD_SIZE: ``head_bytes`` (bytes
        # read while the head is unfinished) catches a head that grows across reads, even inside
        # one endless field that llhttp has not handed over yet; ``parsed_head`` (the fields
        # llhttp handed over) catches a whole oversized head read at once together with body
        # bytes, which must not count, so it is checked inside the parse (on_headers_complete).
        self.head_bytes = 0
        self.parsed_head = 0
        self.head: ResponseHead | None = None
        """The final answer's head, once llhttp has read all of it."""
        self.keep_alive = False
        """Whether both sides keep the connection, asked of llhttp once the head is read."""

        # --- the answer's body --------------------------------------------------------------
        self.chunks: list[bytes] = []
        """Body bytes read from the upstream and not yet taken by the exchange."""
        self.buffered = 0
        self.reading_paused = False
        """Reading is paused until the exchange takes ``chunks`` (a slow client)."""
        self.complete = False
        """The whole answer is read (or the HTTP part of the connection ended at a ``101``)."""
        self.failure: UpstreamError | None = None
        """Why the exchange broke, raised to the exchange at its next wait."""

        # --- the exchange's wait ------------------------------------------------------------
        self.waiter: asyncio.Future[None] | None = None
        """Set while the exchange waits for the head, a body chunk, or the end."""

    def wake(self) -> None:
        """Something the exchange may be waiting for happened: let it look again."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_body(self) -> bytes:
        """Every body byte read and not yet taken, joined; the buffer is empty afterwards."""
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        return body
