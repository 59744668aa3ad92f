"""The client's request body on its way upstream: read ahead when small, streamed when large.

Slow clients cannot hold what others need (issue 12). An upstream slot
(``--upstream-max-connections``) and an upstream connection are taken only once a request can be
sent at the speed of the upstream:

* A body of up to ``--request-buffer-size`` (64 KiB by default) is read whole first
  (``read_ahead``), as nginx's ``proxy_request_buffering`` and HAProxy's
  ``http-buffer-request`` do, and sent with its head in one write. A slow uploader then costs
  one client connection and its buffer, never a slot; ``Expect: 100-continue`` is answered
  before that read, since nothing waits upstream. A chunked body that ends within the buffer
  goes on chunked, in the same one write. A larger body is streamed as it arrives
  (``upload``, a task of its own beside the wait for the answer), after the upstream is
  connected.
* The whole body must arrive within ``--body-timeout`` of the request's head (→ 408), not only
  each read: a body trickled a byte at a time cannot hold a slot for longer.
* ``--max-body-size`` refuses a body that crosses it (→ 413), wherever it crosses it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.edge.gate import BAD_BODY, BODY_TIMEOUT, Limits, Rejection, body_too_large
from proxy.exchange.state import Exchange, PhaseEvent
from proxy.upstream.connection import UpstreamConnection
from proxy.wire.headers import expects_continue

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class ClientBodyError(Exception):
    """The client's request body could not be forwarded; ``rejection`` says how to answer.

    ``client_gone``: the read failed because the client left, so there is nobody to answer.
    """

    def __init__(self, rejection: Rejection, *, client_gone: bool = False) -> None:
        super().__init__(rejection.reason)
        self.rejection = rejection
        self.client_gone = client_gone


class BodyRelay:
    """Reads request bodies under the proxy's limits and sends them upstream (module docstring)."""

    def __init__(self, limits: Limits, body_timeout: float, buffer_size: int) -> None:
        self._limits = limits
        self._body_timeout = body_timeout
        self._buffer_size = buffer_size

    async def read_ahead(self, request: web.BaseRequest, exchange: Exchange) -> tuple[bytes, float]:
        """The body read before the upstream is contacted, and the body's deadline (loop time).

        All of it when it fits ``--request-buffer-size`` (``request.content.at_eof()`` is then
        True); for a chunked body that turns out larger, the part read so far, which ``upload``
        sends first; nothing for a declared length larger than the buffer, or no body. The usual
        API call (a JSON body of a few KiB) arrived in the same read as its head and is taken
        without a wait; an ``Expect: 100-continue`` is then left unanswered, as RFC 9110 §10.1.1
        allows once the content has been received.
        """
        if not request.body_exists:
            return b"", 0.0
        body_deadline = asyncio.get_running_loop().time() + self._body_timeout
        length = request.content_length
        if length is not None and length > self._buffer_size:
            return b"", body_deadline
        content = request.content
        limit = self._limits.max_body_size
        if content.is_eof():
            try:
                body = content.read_nowait()
            except Exception as exc:  # the stream failed (aiohttp set an exception on it)
                raise ClientBodyError(BAD_BODY) from exc
            if limit is not None and len(body) > limit:
                raise ClientBodyError(body_too_large(limit))
            return body, body_deadline
        exchange.advance(PhaseEvent.READING_BODY)
        if expects_continue(request.headers.getall("Expect", [])) is True:
            # RFC 9110 §10.1.1: nothing upstream waits on this body, so it is asked for at once.
            await request.writer.write(CONTINUE)
        pieces: list[bytes] = []
        received = 0
        while received < self._buffer_size and (chunk := await _read_chunk(request, body_deadline)):
            received += len(chunk)
            if limit is not None and received > limit:
                raise ClientBodyError(body_too_large(limit))
            pieces.append(chunk)
        exchange.advance(PhaseEvent.BODY_READ)
        return b"".join(pieces), body_deadline

    async def upload(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        connection: UpstreamConnection,
        ahead: bytes,
        body_deadline: float,
        *,
        chunked: bool,
        send_continue: bool,
    ) -> None:
        """The rest of the client's body, chunk by chunk as it arrives: never buffered whole."""
        exchange.advance(PhaseEvent.READING_BODY)
        limit = self._limits.max_body_size
        received = len(ahead)
        if send_continue:
            # RFC 9110 §10.1.1: ask for the body only once the upstream is connected and ready for
            # it, as nginx does; a refused upstream then costs no upload.
            await request.writer.write(CONTINUE)
        chunk = ahead
        while chunk or (chunk := await _read_chunk(request, body_deadline)):
            if chunk is not ahead:
                received += len(chunk)
            if limit is not None and received > limit:
                # A chunked body has no declared size: it is cut where it crosses the limit, and
                # the upstream sees an incomplete request (its connection is closed, not pooled).
                raise ClientBodyError(body_too_large(limit))
            await connection.send_body(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            chunk = b""
        if chunked:
            await connection.send_body(LAST_CHUNK)
        connection.request_sent()
        # After an early answer the phase stays STREAMING_RESPONSE (PHASE_MOVES).
        exchange.advance(PhaseEvent.BODY_READ)


async def _read_chunk(request: web.BaseRequest, body_deadline: float) -> bytes:
    """The next piece of the client's body (b"" at its end), before the body's deadline.

    The deadline bounds the whole body, from the end of its head (``--body-timeout``), not each
    read: a body trickled a byte at a time ends with 408 at the same moment as a stalled one.
    """
    try:
        async with asyncio.timeout_at(body_deadline):
            return await request.content.readany()
    except TimeoutError as exc:
        raise ClientBodyError(BODY_TIMEOUT) from exc
    except Exception as exc:
        # The client left mid-upload, or its chunked framing broke.
        raise ClientBodyError(BAD_BODY, client_gone=request.transport is None) from exc


def retrieve_failure(upload: asyncio.Task[None]) -> None:
    """Mark an upload's failure as seen: it is acted on only if the answer has not come first."""
    if not upload.cancelled():
        upload.exception()
