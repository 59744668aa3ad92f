"""The response sent to the client: the upstream's, passed through without additions.

aiohttp's ``StreamResponse`` fills in ``Content-Type: application/octet-stream`` and its own
``Server`` when a response has none. A proxy must not invent either (the upstream chose not to
send them), so they are taken back out after aiohttp prepares the header block. ``Date`` is left:
RFC 9110 §6.6.1 asks a recipient with a clock to add one when forwarding a response without it.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.helpers import rfc822_formatted_time

# RFC 9110 §9.3.2 (HEAD), §15.3.5 (204), §15.4.5 (304), §15.2 (1xx): no content, whatever the
# framing headers say.
_EMPTY_STATUSES = frozenset({204, 304})


def must_be_empty(method: str, status: int) -> bool:
    """True when a response to ``method`` with ``status`` carries no body."""
    return method == hdrs.METH_HEAD or status in _EMPTY_STATUSES or 100 <= status < 200


class ForwardedResponse(web.StreamResponse):
    """A ``StreamResponse`` that adds no ``Content-Type`` or ``Server`` of its own.

    Its headers are sent as soon as it is prepared, so a client of a slow or streaming answer sees
    them at once; when the first body bytes follow in the same turn of the loop, the client
    connection's ``proxy.edge.coalesce.CoalescingTransport`` sends both in one write.
    """

    async def _prepare_headers(self) -> None:
        had_content_type = hdrs.CONTENT_TYPE in self.headers
        had_server = hdrs.SERVER in self.headers
        await super()._prepare_headers()
        if not had_content_type:
            self.headers.popall(hdrs.CONTENT_TYPE, None)
        if not had_server:
            self.headers.popall(hdrs.SERVER, None)


def whole_answer(
    status: int, reason: str, fields: list[tuple[str, str]], names: list[bytes], body: bytes
) -> bytes:
    """The bytes ``ForwardedResponse`` would write for a whole answer to an HTTP/1.1 keep-alive
    request: the status line, ``fields`` in order, ``Content-Length``, then ``Date`` if the
    upstream sent none (aiohttp's own per-second date), and ``body``.

    aiohttp's response machinery (prepare, its header multidict, the stream writer) cost about
    44 k instructions a request of the 400 k hangup took for a 1 KiB GET (issue 16); this is one
    join and one encode. ``names`` are the fields' lower-cased names. The values came through
    llhttp, which refuses a CR or LF in a field, and were decoded as latin-1, which encodes them
    back byte for byte. (aiohttp's serializer, on the streamed path, writes them as UTF-8, so an
    obs-text byte of a field value, RFC 9110 §5.5, reaches the client re-encoded there.)
    """
    lines = [f"HTTP/1.1 {status} {reason}", *map(": ".join, fields)]
    lines.append(f"Content-Length: {len(body)}")
    if b"date" not in names:
        # RFC 9110 §6.6.1: a recipient with a clock adds Date to a response forwarded without it.
        lines.append(f"Date: {rfc822_formatted_time()}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1") + body


class SentResponse(web.StreamResponse):
    """What the handler returns for an answer it wrote to the client itself (``whole_answer``).

    aiohttp's ``finish_response`` then prepares and ends nothing (both return at once for a
    response whose end was sent), and keeps the connection alive, as it would have for the
    ``ForwardedResponse`` of a keep-alive request. These are aiohttp's own private flags: any
    change to them fails every forwarding test, since nearly every answer takes this path.

    Nothing reads or changes such a response once it is returned, so one serves every answer
    (``SENT``): a response object per request cost about 7k instructions (issue 16).
    """

    def __init__(self) -> None:
        super().__init__()
        self._eof_sent = True
        self._keep_alive = True


SENT = SentResponse()


def proxy_answer(status: int, text: str, *, close: bool = False) -> web.Response:
    """An answer the proxy makes itself: ``"<status> <text>"`` as plain text.

    ``close`` ends the client connection after it: after a refusal, an unread body must never be
    parsed as a next request; after a failed WebSocket handshake, the client that asked to leave
    HTTP gets a clean end.
    """
    response = web.Response(status=status, text=f"{status} {text}\n")
    if close:
        response.force_close()
    return response
