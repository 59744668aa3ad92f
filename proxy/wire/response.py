"""The response sent to the client: the upstream's, passed through without additions.

aiohttp's ``StreamResponse`` fills in ``Content-Type: application/octet-stream`` and its own
``Server`` when a response has none. A proxy must not invent either (the upstream chose not to
send them), so they are taken back out after aiohttp prepares the header block. ``Date`` is left:
RFC 9110 §6.6.1 asks a recipient with a clock to add one when forwarding a response without it.
"""

from __future__ import annotations

from aiohttp import hdrs, web

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
