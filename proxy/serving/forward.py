"""Forwarding one request to the upstream, and abandoning it when the client hangs up.

Theory of operation
-------------------
The front is aiohttp's low-level server, run with ``handler_cancellation=True``: when a client's
connection is lost (FIN or RST), ``RequestHandler.connection_lost`` cancels the task running
``Forwarder.handle`` for it. What happens next depends on the method's policy:

* **Cancellable** (GET, HEAD, OPTIONS, TRACE by default): before the task is even cancelled, a
  hook closes the exchange's upstream connection (``proxy.exchange.upstream_leg``) from the callback
  that learned of the hang-up: ``eof_received`` for a FIN, within the read that saw it, or
  ``connection_lost`` for a RST (``GateRequestHandler.hangup_hooks``). The close shuts the socket
  down at once (``proxy.upstream.connection``), so the backend learns of the hang-up in that same
  turn. The ``CancelledError`` then lands wherever the exchange was waiting (reading the client's
  body, waiting for the upstream's head, or streaming its body) and the exchange ends as a 499. The
  upstream connection is closed, never pooled, so the backend's ``connection_lost`` fires.

* **Carried to the end** (everything else by default): the client connection is told to let
  the hang-up pass its task by (``GateRequestHandler.on_carried_hangup``), so the exchange runs
  on in the task aiohttp started for it, which the forwarder then keeps among ``detached`` (and,
  for a grace rule, cancels once the grace has passed). The request finishes reaching the
  upstream (if its body had fully arrived), the upstream answers, and the answer is read and
  discarded so the connection can be pooled again. Nothing is ever retried
  (``proxy.upstream.connection``).

A request body is sent by a task of its own while the exchange waits for the upstream's head, so
an upstream that answers early (a 413 or a 401 before reading the upload) is heard at once, as
RFC 9112 §9.3 asks a client to. Every way an exchange can end is one of ``Exchange``'s endings
(``proxy.exchange.state``: one table, the first ending wins), then ``_finished``, which pools or
closes the upstream connection and writes the one canonical log line.

Slow clients cannot hold what others need (issue 12): a body is read ahead or streamed under
``--request-buffer-size`` and ``--body-timeout`` (``proxy.serving.request_body``), and an upstream
slot is taken only once the request can be sent at the speed of the upstream. A client that
accepts no byte of its answer for ``--send-timeout`` is cut
  (``GateRequestHandler``); its exchange ends as ``send_timeout`` and its upstream connection is
closed, whatever the method: the request reached the upstream already, and the rest of an answer
nobody reads is not worth a slot.

Timeouts: ``--connect-timeout`` bounds the TCP connect (→ 502) and ``--upstream-timeout`` bounds
the wait for the upstream's head once the request is written, then every gap between body chunks
(→ 504); ``proxy.upstream.connection`` stops that clock while reading is paused by a slow client
(whom the send timeout bounds instead).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable

import structlog
from aiohttp import HttpVersion11, web

from proxy.edge.frontend import GateRequestHandler
from proxy.edge.gate import UNSUPPORTED_EXPECTATION, UPSTREAM_BUSY, Rejection, check_request
from proxy.exchange.state import Ending, Exchange, Outcome, Phase, PhaseEvent
from proxy.exchange.upstream_leg import UpstreamLeg
from proxy.observability.metrics import ProxyMetrics
from proxy.policy.decision_header import HEADER_LINES
from proxy.policy.routes import Action, Decision, RoutePolicy
from proxy.serving.request_body import LAST_CHUNK, BodyRelay, ClientBodyError, retrieve_failure
from proxy.settings.config import ProxyConfig, parse_seconds
from proxy.upstream.connection import (
    ResponseHead,
    UpstreamConnection,
    UpstreamError,
)
from proxy.upstream.pool import UpstreamPool
from proxy.websocket.tunnels import TUNNEL_DECISION, WebSocketTunnels, is_websocket_handshake
from proxy.wire.headers import (
    downstream_response_fields,
    downstream_response_fields_with_names,
    expects_continue,
    framing_field,
    request_head,
    request_id_from,
    request_target,
    upstream_request_fields,
)
from proxy.wire.response import SENT, ForwardedResponse, SentResponse, must_be_empty, whole_answer

log = structlog.get_logger("hangup.proxy")


class Forwarder:
    """The request handler: ``await forwarder.handle(request)`` for every client request."""

    def __init__(self, config: ProxyConfig, pool: UpstreamPool, metrics: ProxyMetrics) -> None:
        self._default_host = config.upstream.authority
        self._routes: RoutePolicy = config.route_policy
        self._deadline_header = config.deadline_header
        self._upstream_timeout = config.upstream_timeout
        self._pool = pool
        self._metrics = metrics
        self._limits = config.limits
        self._bodies = BodyRelay(config.limits, config.body_timeout, config.request_buffer_size)
        self._upstream_slots = config.upstream_max_connections
        self._upstream_active = 0
        # Set by the server when the drain timeout runs out: from then on a cancellation is the
        # proxy cutting the exchange, not the client leaving.
        self.cut_off = False
        # The tasks of exchanges carried to the end after their client left: aiohttp no longer
        # tracks them, so shutdown waits for them here (and cuts them at the drain's end).
        self.detached: set[asyncio.Task[object]] = set()
        self.websockets = WebSocketTunnels(pool, metrics)

    def handle(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        """What aiohttp awaits for ``request``.

        A plain function that returns the coroutine to await, not a coroutine itself: a
        cancellable exchange, nearly every request, is then awaited by aiohttp directly, one
        coroutine frame less to resume at each of its waits (issue 16).
        """
        path = request.raw_path.partition("?")[0]
        websocket = is_websocket_handshake(request)
        # Route rules and cancel methods do not apply to a tunnel (proxy.websocket.tunnels).
        decision = TUNNEL_DECISION if websocket else self._routes.decide(request.method, path)
        exchange = Exchange(
            request_id=request_id_from(request.raw_headers),
            method=request.method,
            path=path,
            client=request.remote,
            cancellable=decision.action is Action.CANCEL,
            decision=decision,
        )
        # Every line logged for this request carries its id. This runs in the handler's task,
        # before aiohttp awaits what is returned.
        structlog.contextvars.bind_contextvars(request_id=exchange.request_id)
        if websocket:
            return self._tunnel(request, exchange)
        if exchange.cancellable:
            return self._exchange(request, exchange)
        return self._carried(request, exchange)

    async def _tunnel(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """A WebSocket session is a tunnel, not an exchange (``proxy.websocket.tunnels``).

        It holds an upstream connection for as long as it is open, so it counts towards
        ``--upstream-max-connections`` for all that time.
        """
        rejection = self._admission(request) or self._slot_taken()
        self._upstream_active += 1
        try:
            return await self.websockets.handle(request, exchange, rejection)
        finally:
            self._upstream_active -= 1

    async def _carried(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """An exchange carried to the end: a hang-up leaves its task running.

        No task of its own, and no ``asyncio.shield``: those cost a write about 30k instructions
        (issue 16). The client connection calls ``_detach`` instead of cancelling.
        """
        client = request.protocol
        if not isinstance(client, GateRequestHandler):
            raise TypeError("the forwarder serves the connections of proxy.edge.frontend only")
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - aiohttp runs every handler in a task
            raise RuntimeError("a request handled outside a task")
        client.on_carried_hangup = functools.partial(self._detach, task, exchange.decision)
        try:
            return await self._exchange(request, exchange)
        finally:
            client.on_carried_hangup = None

    def _detach(self, task: asyncio.Task[object], decision: Decision) -> None:
        """The client of a carried exchange left: keep its task for shutdown to wait for.

        With a grace rule, the exchange may finish within the grace period (its answer is then
        discarded and the connection pooled); past it, it is cancelled, which closes the upstream
        connection as for an immediate cancel.
        """
        self.detached.add(task)
        task.add_done_callback(self.detached.discard)
        if decision.action is Action.GRACE:
            cut = asyncio.get_running_loop().call_later(decision.grace, task.cancel)
            task.add_done_callback(lambda _: cut.cancel())

    async def _exchange(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        leg = UpstreamLeg(exchange)
        self._metrics.started()
        protocol = request.protocol
        if exchange.cancellable and isinstance(protocol, GateRequestHandler):
            # Closed inside the client's FIN or connection loss, not a turn later.
            leg.arm(protocol)
        try:
            rejection = self._admission(request)
            if rejection is None:
                ahead, body_deadline = await self._bodies.read_ahead(request, exchange)
                # Only now, with what is small read whole, is a slot worth taking.
                rejection = self._slot_taken()
            if rejection is not None:
                return exchange.refused(rejection)
            self._upstream_active += 1
            try:
                deadline = self._client_deadline(request)
                return await self._forward(
                    request, exchange, leg, ahead, body_deadline, deadline=deadline
                )
            finally:
                self._upstream_active -= 1
        except asyncio.CancelledError:
            self._cancelled(request, exchange, leg)
            raise
        except ConnectionResetError:
            # Writing to a client that left (its loss may not have been noticed yet).
            return _client_lost(request, exchange).answer()
        except ClientBodyError as exc:
            # From the upload, which runs beside the wait for the answer.
            if exc.client_gone or exchange.client_gone:
                return exchange.client_left().answer()
            return exchange.refused(exc.rejection)
        except UpstreamError as exc:
            return exchange.upstream_failed(exc).answer()
        finally:
            self._finished(exchange, leg)

    async def _forward(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        leg: UpstreamLeg,
        ahead: bytes,
        body_deadline: float,
        *,
        deadline: float | None,
    ) -> web.StreamResponse:
        """Send the request upstream and relay the answer, by the client's ``deadline`` if any."""
        if deadline is not None:
            # Only then a timeout to enter: nearly every request has no client deadline, and
            # ``asyncio.timeout_at(None)`` still costs about 2 µs (issue 16).
            try:
                async with asyncio.timeout_at(deadline) as budget:
                    return await self._forward(
                        request, exchange, leg, ahead, body_deadline, deadline=None
                    )
            except TimeoutError:
                if not budget.expired():
                    raise
                return self._deadline_passed(request, exchange)
        # _send_upstream sends; the wait for the answer's head is here.
        connection = await self._send_upstream(request, exchange, leg, ahead, body_deadline)
        head = await connection.response_head()
        exchange.upstream_answered(head.status)
        return await self._relay_response(request, exchange, connection, head)

    def _finished(self, exchange: Exchange, leg: UpstreamLeg) -> None:
        """Every exchange ends here once: its upstream pooled or closed, then recorded."""
        leg.disarm()
        upload = leg.upload
        if upload is not None and not upload.done():
            # The answer came (or the exchange failed) before the whole body was sent: the
            # connection carries half a request and is closed below, never pooled.
            upload.cancel()
        connection = leg.connection
        if connection is not None:
            if exchange.client_gone and exchange.cancellable:
                # Already cut by the hook, or the hang-up surfaced as a failed write to the
                # client rather than as a cancellation: this close is the same cancel.
                leg.cut()
            else:
                # Pooled only when the exchange ended cleanly (proxy.upstream.connection), else
                # closed.
                self._pool.release(connection)
        exchange.write_log_line()
        self._metrics.finished(exchange)

    def _client_deadline(self, request: web.BaseRequest) -> float | None:
        """The loop time at which the client's own bound on the exchange ends.

        Capped by the upstream timeout. Only with ``--deadline-header``; a missing value means no
        client deadline, and so does one that is no positive number of seconds (``abc``, ``-1``),
        which is counted and logged at debug (issue 14): the client meant a bound it does not get.
        """
        if self._deadline_header is None:
            return None
        value = request.headers.get(self._deadline_header)
        if value is None:
            return None
        try:
            seconds = parse_seconds(value)
        except ValueError:
            self._metrics.invalid_deadline_header()
            # The request id comes from the context (bound in ``handle``); the value is the
            # client's, so only its start is logged.
            log.debug("deadline_header_invalid", header=self._deadline_header, value=value[:64])
            return None
        loop = asyncio.get_running_loop()
        return loop.time() + min(seconds, self._upstream_timeout)

    def _deadline_passed(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """The client's deadline passed: 504 (or a cut, once streaming); the upstream is closed."""
        ending = exchange.deadline_passed()
        if exchange.phase is Phase.STREAMING_RESPONSE and request.transport is not None:
            request.transport.close()
        return ending.answer()

    def _admission(self, request: web.BaseRequest) -> Rejection | None:
        """Whether to refuse the request before any of it is forwarded (``proxy.edge.gate``)."""
        rejection = check_request(
            request.method, request.version, request.raw_path, request.raw_headers, self._limits
        )
        if rejection is not None:
            return rejection
        if expects_continue(request.headers.getall("Expect", [])) is False:
            return UNSUPPORTED_EXPECTATION
        return None

    def _slot_taken(self) -> Rejection | None:
        """503 when every upstream slot is taken: refused at once rather than queued unbounded."""
        return UPSTREAM_BUSY if self._upstream_active >= self._upstream_slots else None

    def _cancelled(self, request: web.BaseRequest, exchange: Exchange, leg: UpstreamLeg) -> None:
        """Record why the exchange was cancelled and make sure its upstream socket is closed."""
        if self.cut_off:
            exchange.cut_by_drain()
        elif request.transport is None:
            # aiohttp cancelled us because the client's connection is gone.
            _client_lost(request, exchange)
            leg.cut()

    async def _send_upstream(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        leg: UpstreamLeg,
        ahead: bytes,
        body_deadline: float,
    ) -> UpstreamConnection:
        """Send the request (what ``read_ahead`` left from a task of its own): the connection
        it went out on, whose answer's head the caller then waits for.

        A body that is still arriving is streamed by a task of its own, and this returns once
        the upload is done or the answer's head is here, whichever comes first.
        """
        has_body = request.body_exists
        whole = not has_body or request.content.at_eof()
        # The length from hangup's parse: aiohttp's parse of the client's framing (it refused a
        # Content-Length that is not plain digits, a repeated one, and one beside
        # Transfer-Encoding). A body of unknown length goes on chunked, even when it was read
        # whole: it keeps the framing its client chose, as HAProxy's http-buffer-request does.
        length = request.content_length
        chunked = has_body and length is None
        head = self._request_head(request, exchange, framing_field(length, has_body=has_body))
        if whole and chunked:
            ahead = (b"%x\r\n%b\r\n" % (len(ahead), ahead) if ahead else b"") + LAST_CHUNK
        connection = leg.connection = await self._pool.acquire()
        if whole:
            # The whole request is at hand: one write, at the end of the turn, as for a GET.
            connection.send_request(
                head + ahead if ahead else head,
                head_only=request.method == "HEAD",
                body_follows=False,
            )
            return connection
        connection.send_request(head, head_only=request.method == "HEAD", body_follows=True)
        upload = leg.upload = asyncio.create_task(
            self._bodies.upload(
                request,
                exchange,
                connection,
                ahead,
                body_deadline,
                chunked=chunked,
                # A body read ahead had its 100 Continue already; only a request with a body
                # looks again at Expect (admission vetted it already).
                send_continue=not ahead
                and expects_continue(request.headers.getall("Expect", [])) is True,
            )
        )
        upload.add_done_callback(retrieve_failure)
        await connection.head_or_end_of(upload)
        failure = upload.exception() if upload.done() else None
        # The answer wins over an upload the upstream cut short; a broken client body never does.
        if failure is not None and (
            connection.head is None or isinstance(failure, ClientBodyError)
        ):
            raise failure
        return connection

    def _request_head(
        self, request: web.BaseRequest, exchange: Exchange, framing: str | None
    ) -> bytes:
        """The request line and header block, as the upstream will see them.

        ``framing`` is the one framing line, from hangup's parse (RFC 9112 §6): the client's own
        ``Content-Length`` and ``Transfer-Encoding`` never reach the upstream, so no header list,
        and no ``Connection`` naming them (RFC 9110 §7.6.1), can change where the body ends.
        """
        target = request_target(request.raw_path)
        fields = upstream_request_fields(
            request.raw_headers,
            client_ip=request.remote,
            request_id=exchange.request_id,
            default_host=self._default_host,
            authority=target.authority,
        )
        # What a hang-up does to this request, for a backend that trusts us to say it.
        decision = HEADER_LINES[exchange.decision.action]
        extra = (decision,) if framing is None else (decision, framing)
        return request_head(f"{request.method} {target.origin} HTTP/1.1", fields, *extra)

    async def _relay_response(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        connection: UpstreamConnection,
        head: ResponseHead,
    ) -> web.StreamResponse:
        if request.transport is None:
            # A write carried to the end whose client already left: discard the answer, reading
            # it whole so the connection can serve the next request.
            left = _client_lost(request, exchange)
            await _discard(connection)
            return left.answer()
        exchange.advance(PhaseEvent.RESPONSE_STARTED)
        sent = _write_whole(request, head, connection)
        if sent is not None:
            exchange.completed(head.status)
            return sent
        response = ForwardedResponse(
            status=head.status,
            reason=head.reason,
            headers=downstream_response_fields(head.raw_headers),
        )
        # RFC 9112 §6.3: the length llhttp framed the answer by, never the field list's; with
        # none, aiohttp frames it as chunked (or by closing, for an HTTP/1.0 client).
        response.content_length = head.content_length
        try:
            await response.prepare(request)
            if not must_be_empty(request.method, head.status):
                while chunk := await connection.read_body():
                    await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            _client_lost(request, exchange)
            if not exchange.cancellable and exchange.outcome is Outcome.CLIENT_HANGUP:
                await _discard(connection)
            raise
        except UpstreamError as exc:
            # Headers are gone already: the only honest signal left is a cut connection, which the
            # client sees as a short body or a missing last chunk.
            exchange.upstream_failed(exc)
            if request.transport is not None:
                request.transport.close()
            return response
        exchange.completed(head.status)
        return response


def _write_whole(
    request: web.BaseRequest, head: ResponseHead, connection: UpstreamConnection
) -> SentResponse | None:
    """Write an answer that arrived whole in one piece, or ``None`` to have it streamed.

    Taken by an answer with a known length, a body, and every byte of it here, to an HTTP/1.1
    keep-alive request on a client connection that is open: nearly every answer of an API. What
    reaches the client is what ``ForwardedResponse`` writes (``proxy.wire.response.whole_answer``);
    anything else (HTTP/1.0, ``Connection: close``, chunked or close-delimited answers, HEAD,
    204, 304, an answer still arriving) is streamed.
    """
    length = head.content_length
    transport = request.transport
    if (
        length is None
        or transport is None
        or transport.is_closing()
        or request.version != HttpVersion11
        or not request.keep_alive
        or must_be_empty(request.method, head.status)
    ):
        return None
    body = connection.whole_body(length)
    if body is None:
        return None
    fields, names = downstream_response_fields_with_names(head.raw_headers)
    transport.write(whole_answer(head.status, head.reason, fields, names, body))
    return SENT


def _client_lost(request: web.BaseRequest, exchange: Exchange) -> Ending:
    """The client's connection is gone: it hung up, or the proxy cut it for not reading."""
    protocol = request.protocol
    stalled = isinstance(protocol, GateRequestHandler) and protocol.send_timed_out
    return exchange.client_left(send_timed_out=stalled)


async def _discard(connection: UpstreamConnection) -> None:
    """Read an unwanted answer to its end without keeping it (the connection may then be pooled)."""
    while await connection.read_body():
        pass
