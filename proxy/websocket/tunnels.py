"""WebSocket sessions: a transparent byte tunnel between the client and the upstream.

Theory of operation
-------------------
``Forwarder.handle`` hands over every ``GET`` HTTP/1.1 request with ``Upgrade: websocket``
(``is_websocket_handshake``). Such a session is not an HTTP exchange, so it gets an upstream
connection of its own from the upstream client (``proxy.upstream.connection``), never a pooled one
and never pooled afterwards, used in upgrade mode: a ``101`` is the expected answer there, not an
error.

1. Connect, over TCP or the unix socket (``UpstreamPool.connect``: ``--connect-timeout``; refused
   or late → 502 ``upstream_connect_failed``), write the handshake request head
   (``proxy.websocket.handshake``), read the upstream's response head with the upstream client's
   llhttp parser and its limits (``--upstream-timeout`` → 504; garbage, a head over 64 KiB, a 101 to
   another protocol or without ``Connection: upgrade`` → 502). A 100 or 103 ahead of the answer
   is skipped, as before any answer (RFC 9110 §15.2). A client that leaves before the answer's
   head is here cuts the upstream connection from its own callbacks, as for any request
   (``proxy.exchange.upstream_leg``).
2. A final answer (a refusal: 401, 403, 426, ...) is relayed as an ordinary response, its body
   read whole through the upstream client (its framing, its read timeout; up to
   ``MAX_REFUSAL_BODY``), and both connections are closed.
3. On ``101`` with ``Upgrade: websocket`` (``proxy.websocket.splice`` from here on), the upstream
   connection is handed to an asyncio stream pair (``_tunnel_streams``), the bytes that followed
   the 101 in its read first; the 101 head is written to the client's transport, and from then
   on bytes are spliced both ways without being decoded: RFC 6455 frames, masks, extensions
   (compression included) are the two endpoints' business. aiohttp has already
   switched the client connection to raw bytes (its parser does so for ``Upgrade: websocket``);
   ``RequestHandler.set_parser`` hands them to us, the way aiohttp's own ``WebSocketResponse``
   receives them. Each direction has back-pressure: a reader that stops reading stalls its writer.
4. The session ends when either side's connection ends. The other side is then closed too, at
   once: if the side that left never sent a Close frame, the proxy first sends one on its behalf
   (1001 when the client vanished or the proxy shuts down, 1011 when the upstream vanished;
   RFC 6455 §7.4.1), provided the bytes so far end on a frame boundary (``proxy.websocket.frames``).
   A client that vanishes cancels the handler (``handler_cancellation=True``), exactly like a
   hang-up in an HTTP exchange, and the cancel path closes the upstream socket, so the backend's
   WebSocket handler sees its connection end. When the proxy starts draining, ``go_away`` ends every
   open session with 1001 to both sides.

There is no read timeout once the tunnel is open: an idle WebSocket is normal (endpoints keep it
alive with their own pings, RFC 6455 §5.5.2). One canonical ``request`` line is logged when the
session ends (``proxy.exchange.state``): ``completed`` when an endpoint sent a Close frame,
``client_hangup`` (499) when the client vanished without one, ``upstream_error`` when the upstream
did, ``completed`` / ``proxy_going_away`` when the drain ended it; ``reason`` says who sent the
first Close frame and its code (``client_close_1000``). A WebSocket's ``policy_rule`` is always
``websocket``: route rules and cancel methods do not apply to a tunnel.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.edge.frontend import GateRequestHandler
from proxy.edge.gate import HANDSHAKE_WITH_BODY, Rejection
from proxy.exchange.state import Exchange
from proxy.exchange.upstream_leg import UpstreamLeg
from proxy.observability.metrics import ProxyMetrics
from proxy.policy.routes import Action, Decision
from proxy.upstream.connection import (
    ResponseHead,
    UpstreamBrokenError,
    UpstreamConnection,
    UpstreamError,
)
from proxy.upstream.pool import UpstreamPool
from proxy.websocket.handshake import (
    asks_for_websocket,
    switches_to_websocket,
    upstream_handshake_head,
)
from proxy.websocket.splice import CHUNK_SIZE, splice
from proxy.wire.headers import downstream_response_fields, request_target
from proxy.wire.response import ForwardedResponse

TUNNEL_DECISION = Decision(Action.CANCEL, 0.0, "websocket")
"""What a hang-up does to a WebSocket session, whatever the route rules say: with nobody left to
relay frames to, the tunnel always closes its upstream socket. ``Forwarder.handle`` gives it to
every handshake's exchange, which is therefore cancellable."""
MAX_REFUSAL_BODY = 1024 * 1024
"""Largest body of a non-101 answer to a handshake, which is relayed whole; past it, 502."""


def is_websocket_handshake(request: web.BaseRequest) -> bool:
    """Whether ``request`` opens a WebSocket session to tunnel (``proxy.websocket.handshake``)."""
    if "Upgrade" not in request.headers:
        return False  # nearly every request: no need to collect the fields below
    return asks_for_websocket(
        request.method,
        (request.version.major, request.version.minor),
        request.headers.getall("Upgrade", []),
        request.headers.getall("Connection", []),
    )


class WebSocketTunnels:
    """Opens and runs the tunnel for each WebSocket handshake (module docstring)."""

    def __init__(self, pool: UpstreamPool, metrics: ProxyMetrics) -> None:
        self._pool = pool
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
        """Run one session from handshake to close; ``rejection`` is the gate's verdict.

        ``exchange`` was made with ``TUNNEL_DECISION``.
        """
        self._metrics.websocket_opened()
        try:
            if rejection is None and request.body_exists:
                rejection = HANDSHAKE_WITH_BODY
            if rejection is not None:
                return exchange.refused(rejection)
            return await self._session(request, exchange)
        except UpstreamError as exc:
            return exchange.upstream_failed(exc).answer(close=True)
        except ConnectionResetError:
            # Writing a refusal to a client that left (its loss may not have been noticed yet).
            return exchange.client_left().answer(close=True)
        except asyncio.CancelledError:
            if exchange.outcome is None and request.transport is None:
                exchange.client_left()  # before the upstream connection was even open
            elif exchange.outcome is None:
                # Nothing but the drain cancels a handler whose client is still connected.
                exchange.cut_by_drain()
            raise
        finally:
            exchange.write_log_line()
            self._metrics.websocket_closed(exchange)

    async def _session(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        # The pool's connect (--connect-timeout, TCP or unix socket), but never a pooled
        # connection, nor pooled afterwards: after a 101 it carries frames, and after a refusal
        # the client is sent away anyway.
        connection = await self._pool.connect()
        writer: asyncio.StreamWriter | None = None
        # Until the answer's head is here, a client that leaves cuts the upstream connection from
        # its own callbacks, as for any request (``proxy.exchange.upstream_leg``); after it, the
        # relay or the splice decides how each side ends.
        leg = UpstreamLeg(exchange)
        leg.connection = connection
        client = request.protocol
        if isinstance(client, GateRequestHandler):
            leg.arm(client)
        try:
            connection.send_request(
                upstream_handshake_head(
                    request_target(request.raw_path),
                    request.raw_headers,
                    client_ip=request.remote,
                    request_id=exchange.request_id,
                ),
                head_only=False,
                body_follows=False,
                upgrade=True,
            )
            head = await connection.response_head()
            leg.disarm()
            exchange.upstream_answered(head.status)
            if head.status >= 200:
                return await _relay_refusal(request, exchange, connection, head)
            if not switches_to_websocket(head.raw_headers):
                raise UpstreamBrokenError("unexpected_upgrade")  # h2c or the like
            reader, writer = _tunnel_streams(connection)
            return await splice(
                request, exchange, reader, writer, head, going_away=self._going_away
            )
        except asyncio.CancelledError:
            if exchange.outcome is None and request.transport is None:
                # The client vanished during the handshake: as in any hang-up, the upstream
                # connection is closed (just below) and the backend sees it end.
                exchange.client_left(closed_upstream=True)
            raise
        finally:
            leg.disarm()
            if writer is None:
                connection.close()  # the FIN leaves at once (``UpstreamConnection.close``)
            else:
                # The tunnel's: a graceful close, so that a Close frame written on the way out
                # (the drain's 1001) is sent before the FIN.
                writer.close()


def _tunnel_streams(
    connection: UpstreamConnection,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The switched connection as the stream pair ``proxy.websocket.splice`` works on.

    The transport is handed to an ``asyncio.StreamReaderProtocol``, the protocol that
    ``asyncio.open_connection`` would have given it, rather than teaching the HTTP client to
    relay frames: the splice keeps its reader and writer, their back-pressure (``drain``) and their
    end-of-stream rules unchanged, and ``proxy.upstream.connection`` stays an HTTP client. The bytes
    that followed the 101 in its read reach the reader first (``switch_protocol``).
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK_SIZE, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = connection.switch_protocol(protocol)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _relay_refusal(
    request: web.BaseRequest,
    exchange: Exchange,
    connection: UpstreamConnection,
    head: ResponseHead,
) -> web.StreamResponse:
    """A final answer other than a 101 reaches the client as an ordinary response.

    Its body is read whole through the upstream client (its framing rules and read timeout), up to
    ``MAX_REFUSAL_BODY``.
    """
    body = bytearray()
    while chunk := await connection.read_body():
        body += chunk
        if len(body) > MAX_REFUSAL_BODY:
            raise UpstreamBrokenError("refusal_too_large")
    response = ForwardedResponse(
        status=head.status,
        reason=head.reason,
        headers=downstream_response_fields(head.raw_headers),
    )
    # The client asked to leave HTTP; after a refusal it gets a clean end instead.
    response.force_close()
    await response.prepare(request)
    await response.write_eof(bytes(body))
    exchange.completed(head.status)
    return response
