"""WebSocket sessions: a transparent byte tunnel between the client and the upstream.

Theory of operation
-------------------
``Forwarder.handle`` hands over every ``GET`` HTTP/1.1 request with ``Upgrade: websocket``
(``is_websocket_handshake``). Such a session is not an HTTP exchange that aiohttp's client could
carry, so the tunnel speaks to the upstream on a socket of its own:

1. Connect, over TCP or the unix socket (``--connect-timeout``; refused or late → 502), write
   the handshake request head (``proxy.handshake``), read the upstream's response head
   (``--upstream-timeout`` → 504; garbage → 502).
2. Anything but a ``101`` with ``Upgrade: websocket`` is relayed as an ordinary response (its body
   is read whole, up to ``MAX_REFUSAL_BODY``) and both connections are closed.
3. On ``101`` (``proxy.splice`` from here on), the 101 head is written to the client's transport,
   and from then on bytes are spliced both ways without being decoded: RFC 6455 frames, masks,
   extensions (compression included) are the two endpoints' business. aiohttp has already
   switched the client connection to raw bytes (its parser does so for ``Upgrade: websocket``);
   ``RequestHandler.set_parser`` hands them to us, the way aiohttp's own ``WebSocketResponse``
   receives them. Each direction has back-pressure: a reader that stops reading stalls its writer.
4. The session ends when either side's connection ends. The other side is then closed too, at
   once: if the side that left never sent a Close frame, the proxy first sends one on its behalf
   (1001 when the client vanished or the proxy shuts down, 1011 when the upstream vanished;
   RFC 6455 §7.4.1), provided the bytes so far end on a frame boundary (``proxy.frames``). A
   client that vanishes cancels the handler (``handler_cancellation=True``), exactly like a hang-up
   in an HTTP exchange, and the cancel path closes the upstream socket, so the backend's WebSocket
   handler sees its connection end. When the proxy starts draining, ``go_away`` ends every open
   session with 1001 to both sides.

There is no read timeout once the tunnel is open: an idle WebSocket is normal (endpoints keep it
alive with their own pings, RFC 6455 §5.5.2). One canonical ``request`` line is logged when the
session ends (``proxy.exchange``): ``completed`` when an endpoint sent a Close frame,
``client_hangup`` (499) when the client vanished without one, ``upstream_error`` when the upstream
did, ``completed`` / ``proxy_going_away`` when the drain ended it; ``reason`` says who sent the
first Close frame and its code (``client_close_1000``). A WebSocket's ``policy_rule`` is always
``websocket``: route rules and cancel methods do not apply to a tunnel.
"""

from __future__ import annotations

import asyncio
import re

import structlog
from aiohttp import web

from proxy.config import ProxyConfig
from proxy.exchange import Exchange, Outcome
from proxy.gate import Rejection
from proxy.handshake import (
    BadResponseHeadError,
    ResponseHead,
    asks_for_websocket,
    parse_response_head,
    upstream_handshake_head,
)
from proxy.headers import downstream_response_headers
from proxy.metrics import UPSTREAM_CONNECT_FAILED, ProxyMetrics
from proxy.response import ForwardedResponse, must_be_empty
from proxy.routes import Action, Decision
from proxy.splice import splice

HANDSHAKE_WITH_BODY = Rejection(
    400, "websocket_handshake_with_body", "a WebSocket handshake carries no body"
)
TUNNEL_DECISION = Decision(Action.CANCEL, 0.0, "websocket")
"""What a hang-up does to a WebSocket session, whatever the route rules say: with nobody left to
relay frames to, the tunnel always closes its upstream socket."""
MAX_HEAD_SIZE = 65536
"""Longest upstream response head; past it, 502."""
MAX_REFUSAL_BODY = 1024 * 1024
"""Largest body of a non-101 answer to a handshake, which is relayed whole; past it, 502."""

_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


def is_websocket_handshake(request: web.BaseRequest) -> bool:
    """Whether ``request`` opens a WebSocket session to tunnel (``proxy.handshake``)."""
    if "Upgrade" not in request.headers:
        return False  # nearly every request: no need to collect the fields below
    return asks_for_websocket(
        request.method,
        (request.version.major, request.version.minor),
        request.headers.getall("Upgrade", []),
        request.headers.getall("Connection", []),
    )


class TunnelFailedError(Exception):
    """The handshake could not be relayed: the outcome, status and reason to record."""

    def __init__(self, outcome: Outcome, status: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.outcome = outcome
        self.status = status
        self.reason = reason
        self.text = text


class WebSocketTunnels:
    """Opens and runs the tunnel for each WebSocket handshake (module docstring)."""

    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics) -> None:
        self._upstream = config.upstream
        self._connect_timeout = config.connect_timeout
        self._handshake_timeout = config.upstream_timeout
        self._metrics = metrics
        # Set once, when the proxy starts draining: every open session is closed with 1001.
        self._going_away = asyncio.Event()

    def go_away(self) -> None:
        """Close every open session, and every one that opens from now on, with 1001.

        Called when the drain starts, before aiohttp closes its connections: from then on
        aiohttp drops whatever a client sends (``RequestHandler.data_received`` returns early once
        the connection is closing), so a tunnel left open would lose the client's frames.
        """
        self._going_away.set()

    async def handle(
        self, request: web.BaseRequest, exchange: Exchange, rejection: Rejection | None
    ) -> web.StreamResponse:
        """Run one session from handshake to close; ``rejection`` is the gate's verdict."""
        structlog.contextvars.bind_contextvars(request_id=exchange.request_id)
        exchange.decision = TUNNEL_DECISION
        exchange.cancellable = True
        self._metrics.websocket_opened()
        try:
            if rejection is None and request.body_exists:
                rejection = HANDSHAKE_WITH_BODY
            if rejection is not None:
                exchange.finish(Outcome.CLIENT_ERROR, rejection.status, rejection.reason)
                return _closing_response(rejection.status, rejection.body)
            return await self._session(request, exchange)
        except TunnelFailedError as failure:
            exchange.finish(failure.outcome, failure.status, failure.reason)
            return _closing_response(failure.status, f"{failure.status} {failure.text}\n")
        except ConnectionResetError:
            # Writing a refusal to a client that left (its loss may not have been noticed yet).
            exchange.hung_up()
            return _closing_response(499, "499 client closed the connection\n")
        except asyncio.CancelledError:
            if exchange.outcome is None and request.transport is None:
                exchange.hung_up()  # before the upstream connection was even open
            elif exchange.outcome is None:
                # Nothing but the drain cancels a handler whose client is still connected.
                exchange.finish(Outcome.DRAIN_TIMEOUT, 503, "drain_timeout")
            raise
        finally:
            exchange.write_log_line()
            self._metrics.websocket_closed(exchange)

    async def _session(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        reader, writer = await self._connect()
        try:
            writer.write(
                upstream_handshake_head(
                    _origin_form(request),
                    request.raw_headers,
                    client_ip=request.remote,
                    request_id=exchange.request_id,
                )
            )
            head = await self._read_head(reader)
            exchange.upstream_status = head.status
            if not head.switches_to_websocket:
                return await self._relay_refusal(request, exchange, reader, head)
            return await splice(
                request, exchange, reader, writer, head, going_away=self._going_away
            )
        except asyncio.CancelledError:
            if exchange.outcome is None and request.transport is None:
                # The client vanished during the handshake: as in any hang-up, the upstream
                # connection is closed (just below) and the backend sees it end.
                exchange.hung_up()
                exchange.closed_upstream()
            raise
        finally:
            # Never pooled: a tunnel's socket carried frames, a refusal's may hold a partial body.
            writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._upstream.unix_path is not None:
                    return await asyncio.open_unix_connection(
                        self._upstream.unix_path, limit=MAX_HEAD_SIZE
                    )
                return await asyncio.open_connection(
                    self._upstream.host, self._upstream.port, limit=MAX_HEAD_SIZE
                )
        except (OSError, TimeoutError) as exc:
            raise TunnelFailedError(
                Outcome.UPSTREAM_ERROR,
                502,
                UPSTREAM_CONNECT_FAILED,
                "the upstream could not be reached",
            ) from exc

    async def _read_head(self, reader: asyncio.StreamReader) -> ResponseHead:
        try:
            async with asyncio.timeout(self._handshake_timeout):
                return parse_response_head(await reader.readuntil(b"\r\n\r\n"))
        except TimeoutError as exc:
            raise _upstream_silent() from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise _upstream_failed(exc) from exc
        except BadResponseHeadError as exc:
            raise _upstream_failed(exc) from exc

    async def _relay_refusal(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        reader: asyncio.StreamReader,
        head: ResponseHead,
    ) -> web.StreamResponse:
        """An answer other than a WebSocket 101 reaches the client as an ordinary response."""
        if head.status < 200:
            # A 101 to another protocol, or a stray 1xx: nothing this client asked for.
            raise _upstream_failed(BadResponseHeadError(f"unexpected {head.status} to a handshake"))
        try:
            async with asyncio.timeout(self._handshake_timeout):
                body = await _read_body(reader, request.method, head)
        except TimeoutError as exc:
            raise _upstream_silent() from exc
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            raise _upstream_failed(exc) from exc
        response = ForwardedResponse(
            status=head.status,
            reason=head.reason,
            headers=downstream_response_headers(head.headers),
        )
        # The client asked to leave HTTP; after a refusal it gets a clean end instead.
        response.force_close()
        await response.prepare(request)
        await response.write_eof(body)
        exchange.finish(Outcome.COMPLETED, head.status)
        return response


async def _read_body(reader: asyncio.StreamReader, method: str, head: ResponseHead) -> bytes:
    """A refusal's body, framed as RFC 9112 §6.3 says; refuses more than ``MAX_REFUSAL_BODY``."""
    if must_be_empty(method, head.status):
        return b""
    if any("chunked" in value.lower() for value in head.values(b"transfer-encoding")):
        return await _read_chunked(reader)
    lengths = {value.strip() for value in head.values(b"content-length")}
    if lengths:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise ValueError("invalid Content-Length")
        length = int(next(iter(lengths)))
        if length > MAX_REFUSAL_BODY:
            raise ValueError("body too large")
        return await reader.readexactly(length)
    body = await reader.read(MAX_REFUSAL_BODY + 1)
    while chunk := await reader.read(MAX_REFUSAL_BODY + 1 - len(body)):
        body += chunk
    if len(body) > MAX_REFUSAL_BODY:
        raise ValueError("body too large")
    return body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_text = (await reader.readuntil(b"\r\n"))[:-2].split(b";")[0].strip()
        if _CHUNK_SIZE.fullmatch(size_text) is None:
            raise ValueError("malformed chunk size")
        size = int(size_text, 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields are dropped, as forward.py's relay does
            return bytes(body)
        if len(body) + size > MAX_REFUSAL_BODY:
            raise ValueError("body too large")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")


def _upstream_silent() -> TunnelFailedError:
    return TunnelFailedError(
        Outcome.UPSTREAM_TIMEOUT,
        504,
        "upstream_read_timeout",
        "the upstream did not answer in time",
    )


def _upstream_failed(exc: BaseException) -> TunnelFailedError:
    return TunnelFailedError(
        Outcome.UPSTREAM_ERROR,
        502,
        f"upstream_failed: {type(exc).__name__}",
        "the upstream connection failed",
    )


def _origin_form(request: web.BaseRequest) -> str:
    """The target byte for byte; absolute-form is reduced to origin-form (RFC 9112 §3.2)."""
    target = request.raw_path
    if target.startswith("/"):
        return target
    return request.rel_url.raw_path_qs if request.rel_url.raw_path else "/"


def _closing_response(status: int, text: str) -> web.Response:
    """An answer the proxy makes itself; the connection is closed after it."""
    response = web.Response(status=status, text=text)
    response.force_close()
    return response
