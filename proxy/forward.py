"""Forwarding one request to the upstream, and abandoning it when the client hangs up.

Theory of operation
-------------------
The front is aiohttp's low-level server, run with ``handler_cancellation=True``: when a client's
connection is lost (FIN or RST), ``RequestHandler.connection_lost`` cancels the task running
``Forwarder.handle`` for it. What happens next depends on the method's policy:

* **Cancellable** (GET, HEAD, OPTIONS, TRACE by default): the ``CancelledError`` lands wherever
  the exchange is waiting — reading the client's body, waiting for the upstream's headers, or
  streaming the upstream's body. aiohttp's client closes its connection when cancelled before the
  response started; after that we call ``ClientResponse.close()`` ourselves, because
  ``release()`` may return a connection to the pool (cancellation-facts §4). Either way the
  upstream socket is closed, never pooled, so the backend's ``connection_lost`` fires.

* **Carried to the end** (everything else by default): the exchange runs in its own task and the
  handler only awaits it through ``asyncio.shield``. The hang-up cancels the handler, not the
  exchange: the request finishes reaching the upstream (if its body had fully arrived), the
  upstream answers, and the answer is read and discarded so the connection can be pooled again.
  Nothing is retried: aiohttp's own retry of idempotent methods is switched off in
  ``proxy.upstream``.

Every way an exchange can end funnels into ``Exchange.finish`` (first call wins) and one
canonical log line written in ``_exchange``'s ``finally``.

Timeouts: ``sock_connect`` bounds the TCP connect (→ 502) and ``sock_read`` bounds the wait for
the upstream's headers once the request body is sent, then every gap between body reads (→ 504);
aiohttp starts that clock only after the request is written and stops it while reading is paused
by back-pressure, so a slow upload or a slow reader is never blamed on the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import ClientConnectorError, ClientError, ClientResponse, ClientSession, web
from aiohttp.client_exceptions import ServerTimeoutError, SocketTimeoutError
from yarl import URL

from proxy.config import ProxyConfig
from proxy.exchange import Exchange, Outcome, Phase
from proxy.frontend import GateRequestHandler
from proxy.gate import Rejection, body_too_large, check_request
from proxy.headers import (
    downstream_response_headers,
    expects_continue,
    request_id_from,
    upstream_request_headers,
)
from proxy.metrics import ProxyMetrics
from proxy.response import ForwardedResponse, must_be_empty
from proxy.routes import Action, RoutePolicy
from proxy.upstream import CLAIM, UpstreamClaim
from proxy.websocket import WebSocketTunnels, is_websocket_handshake

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


BODY_TIMEOUT = Rejection(408, "body_timeout", "the request body stalled")
BAD_BODY = Rejection(400, "bad_request_body", "the request body could not be read")
UPSTREAM_BUSY = Rejection(503, "upstream_connection_limit", "too many upstream requests at once")
UNSUPPORTED_EXPECTATION = Rejection(
    417, "unsupported_expectation", "only the 100-continue expectation is supported"
)


class Forwarder:
    """The request handler: ``await forwarder.handle(request)`` for every client request."""

    def __init__(self, config: ProxyConfig, session: ClientSession, metrics: ProxyMetrics) -> None:
        self._origin = config.upstream.origin
        self._routes: RoutePolicy = config.route_policy
        self._deadline_header = config.deadline_header
        self._upstream_timeout = config.upstream_timeout
        self._session = session
        self._metrics = metrics
        self._limits = config.limits
        self._body_timeout = config.body_timeout
        self._upstream_slots = config.upstream_max_connections
        self._upstream_active = 0
        # Set by the server when the drain timeout runs out: from then on a cancellation is the
        # proxy cutting the exchange, not the client leaving.
        self.cut_off = False
        # Exchanges carried to the end after their client left; kept so they are not
        # garbage-collected mid-flight (RUF006) and so shutdown can wait for them.
        self.detached: set[asyncio.Task[web.StreamResponse]] = set()
        self.websockets = WebSocketTunnels(config, metrics)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        decision = self._routes.decide(request.method, path)
        exchange = Exchange(
            request_id=request_id_from(request.raw_headers),
            method=request.method,
            path=path,
            client=request.remote,
            cancellable=decision.action is Action.CANCEL,
            decision=decision,
        )
        if is_websocket_handshake(request):
            # A WebSocket session is a tunnel, not an exchange (proxy.websocket).
            return await self.websockets.handle(request, exchange, self._admission(request))
        if exchange.cancellable:
            return await self._exchange(request, exchange)
        task = asyncio.create_task(self._exchange(request, exchange))
        self.detached.add(task)
        task.add_done_callback(self.detached.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if decision.action is Action.GRACE and not task.done():
                # The client left: the exchange may finish within the grace period (its answer
                # is then discarded and the connection pooled); past it, it is cancelled, which
                # closes the upstream connection as for an immediate cancel.
                cut = asyncio.get_running_loop().call_later(decision.grace, task.cancel)
                task.add_done_callback(lambda _: cut.cancel())
            raise

    async def _exchange(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        structlog.contextvars.bind_contextvars(request_id=exchange.request_id)
        upstream: ClientResponse | None = None
        self._metrics.started()
        if exchange.cancellable:
            self._cut_on_hangup(request, exchange)
        try:
            rejection = self._admission(request)
            if rejection is not None:
                return _refuse(exchange, rejection)
            self._upstream_active += 1
            try:
                async with asyncio.timeout_at(self._client_deadline(request)) as budget:
                    upstream = await self._send_upstream(request, exchange)
                    exchange.upstream_status = upstream.status
                    return await self._relay_response(request, exchange, upstream)
            except TimeoutError:
                if not budget.expired():
                    raise
                return self._deadline_passed(request, exchange)
            finally:
                self._upstream_active -= 1
        except asyncio.CancelledError:
            self._cancelled(request, exchange, upstream)
            raise
        except ConnectionResetError:
            # Writing to a client that left (its loss may not have been noticed yet).
            exchange.hung_up()
            return _error_response(499, "client closed the connection")
        except ServerTimeoutError as exc:
            return self._upstream_failed(request, exchange, exc)
        except (ClientError, ClientBodyError) as exc:
            # A failure while sending may be the client's body, not the upstream: aiohttp's client
            # reports a body that failed to read as a connection error.
            if exchange.client_gone:
                exchange.hung_up()
                return _error_response(499, "client closed the connection")
            if exchange.body_problem is not None:
                return _refuse(exchange, exchange.body_problem)
            return self._upstream_failed(request, exchange, exc)
        finally:
            self._finished(exchange, upstream)

    def _cut_on_hangup(self, request: web.BaseRequest, exchange: Exchange) -> None:
        """Close this exchange's upstream connection inside the client's ``connection_lost``.

        The connector records the connection it hands this task (``proxy.upstream.CLAIM``, a
        context variable, so exactly this exchange's); the hook is removed when the exchange
        ends, so a later hang-up can never close a pooled connection serving someone else.
        """
        claim = UpstreamClaim()
        CLAIM.set(claim)
        protocol = request.protocol
        if not isinstance(protocol, GateRequestHandler):
            return

        def cut() -> None:
            if claim.cut():
                exchange.hung_up()
                exchange.closed_upstream()

        protocol.hangup_hooks.append(cut)
        exchange.release_hangup_hook = lambda: _discard_hook(protocol, cut, claim)

    def _finished(self, exchange: Exchange, upstream: ClientResponse | None) -> None:
        """Every exchange ends here once: its upstream closed unless completed, then recorded."""
        exchange.release_hangup_hook()
        if upstream is not None and exchange.outcome is not Outcome.COMPLETED:
            upstream.close()
            if exchange.client_gone and exchange.cancellable and not exchange.upstream_closed:
                # The hang-up surfaced as a failed write to the client rather than as a
                # cancellation: the close above is the same cancel, so count it as one.
                exchange.closed_upstream()
        exchange.write_log_line()
        self._metrics.finished(exchange)

    def _client_deadline(self, request: web.BaseRequest) -> float | None:
        """The loop time at which the client's own bound on the exchange ends.

        Capped by the upstream timeout. Only with ``--deadline-header``; a missing or unreadable
        value means no client deadline.
        """
        if self._deadline_header is None:
            return None
        try:
            seconds = float(request.headers.get(self._deadline_header, ""))
        except ValueError:
            return None
        if not 0 < seconds < float("inf"):
            return None
        loop = asyncio.get_running_loop()
        return loop.time() + min(seconds, self._upstream_timeout)

    def _deadline_passed(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """The client's deadline passed: 504 (or a cut, once streaming); the upstream is closed."""
        exchange.finish(Outcome.UPSTREAM_TIMEOUT, 504, "client_deadline")
        if exchange.phase is Phase.STREAMING_RESPONSE and request.transport is not None:
            request.transport.close()
        return _error_response(504, "the request's deadline passed before the upstream answered")

    def _admission(self, request: web.BaseRequest) -> Rejection | None:
        """Whether to refuse the request before any of it is forwarded (``proxy.gate``)."""
        rejection = check_request(
            request.method, request.version, request.raw_path, request.raw_headers, self._limits
        )
        if rejection is not None:
            return rejection
        if expects_continue(request.headers.getall("Expect", [])) is False:
            return UNSUPPORTED_EXPECTATION
        if self._upstream_active >= self._upstream_slots:
            # Refuse at once rather than queue for a pooled connection with no bound.
            return UPSTREAM_BUSY
        return None

    def _cancelled(
        self, request: web.BaseRequest, exchange: Exchange, upstream: ClientResponse | None
    ) -> None:
        """Record why the exchange was cancelled and make sure its upstream socket is closed."""
        if self.cut_off:
            exchange.finish(Outcome.DRAIN_TIMEOUT, 503, "drain_timeout")
        elif request.transport is None:
            # aiohttp cancelled us because the client's connection is gone.
            exchange.hung_up()
            # Cancelled before the headers came, aiohttp's client closes the connection
            # itself; after that, close() (never release()) keeps it out of the pool.
            if upstream is not None:
                upstream.close()
            exchange.closed_upstream()

    async def _send_upstream(self, request: web.BaseRequest, exchange: Exchange) -> ClientResponse:
        headers = upstream_request_headers(
            request.raw_headers, client_ip=request.remote, request_id=exchange.request_id
        )
        body = (
            self._stream_request_body(
                request,
                exchange,
                # Only a request with a body looks again at Expect (admission vetted it already).
                send_continue=expects_continue(request.headers.getall("Expect", [])) is True,
            )
            if request.body_exists
            else None
        )
        url = URL(self._origin + _origin_form(request), encoded=True)
        return await self._session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        )

    async def _stream_request_body(
        self, request: web.BaseRequest, exchange: Exchange, *, send_continue: bool
    ) -> AsyncIterator[bytes]:
        """The client's body, chunk by chunk as it arrives: never buffered whole."""
        exchange.phase = Phase.REQUEST_BODY
        limit = self._limits.max_body_size
        received = 0
        if send_continue:
            # RFC 9110 §10.1.1: ask for the body only once the upstream is connected and ready for
            # it, as nginx does; a refused upstream then costs no upload.
            await request.writer.write(_CONTINUE)
        while chunk := await self._read_body_chunk(request, exchange):
            received += len(chunk)
            if limit is not None and received > limit:
                # A chunked body has no declared size: it is cut where it crosses the limit, and
                # the upstream sees an incomplete request (aiohttp closes that socket).
                exchange.body_problem = body_too_large(limit)
                raise ClientBodyError(exchange.body_problem.reason)
            yield chunk
        exchange.phase = Phase.AWAITING_UPSTREAM_HEADERS

    async def _read_body_chunk(self, request: web.BaseRequest, exchange: Exchange) -> bytes:
        """The next piece of the client's body (b"" at its end), within the body idle timeout."""
        try:
            async with asyncio.timeout(self._body_timeout):
                return await request.content.readany()
        except TimeoutError as exc:
            exchange.body_problem = BODY_TIMEOUT
            raise ClientBodyError(BODY_TIMEOUT.reason) from exc
        except Exception as exc:
            # The client left mid-upload, or its chunked framing broke.
            exchange.client_gone = request.transport is None
            exchange.body_problem = BAD_BODY
            raise ClientBodyError(str(exc)) from exc

    async def _relay_response(
        self, request: web.BaseRequest, exchange: Exchange, upstream: ClientResponse
    ) -> web.StreamResponse:
        if request.transport is None:
            # A write carried to the end whose client already left: discard the answer, reading
            # it whole so the connection can serve the next request.
            exchange.hung_up()
            await _discard(upstream)
            return _error_response(499, "client closed the connection")
        exchange.phase = Phase.STREAMING_RESPONSE
        response = ForwardedResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=downstream_response_headers(upstream.raw_headers),
            body_already_here=upstream.content.total_bytes > 0 or upstream.content.is_eof(),
        )
        try:
            await response.prepare(request)
            if not must_be_empty(request.method, upstream.status):
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            exchange.hung_up()
            if not exchange.cancellable:
                await _discard(upstream)
            raise
        except (ClientError, ServerTimeoutError) as exc:
            # Headers are gone already: the only honest signal left is a cut connection, which the
            # client sees as a short body or a missing last chunk.
            self._upstream_failed(request, exchange, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        exchange.finish(Outcome.COMPLETED, upstream.status)
        upstream.release()
        return response

    def _upstream_failed(
        self, request: web.BaseRequest, exchange: Exchange, exc: BaseException
    ) -> web.StreamResponse:
        """The one funnel for upstream failures: pick the status, record the outcome."""
        if isinstance(exc, SocketTimeoutError):
            exchange.finish(Outcome.UPSTREAM_TIMEOUT, 504, "upstream_read_timeout")
            return _error_response(504, "the upstream did not answer in time")
        if isinstance(exc, ClientConnectorError | ServerTimeoutError):
            exchange.finish(Outcome.UPSTREAM_ERROR, 502, "upstream_connect_failed")
            return _error_response(502, "the upstream could not be reached")
        exchange.finish(Outcome.UPSTREAM_ERROR, 502, f"upstream_failed: {type(exc).__name__}")
        return _error_response(502, "the upstream connection failed")


def _discard_hook(
    protocol: GateRequestHandler, hook: Callable[[], None], claim: UpstreamClaim
) -> None:
    claim.connection = None
    with contextlib.suppress(ValueError):  # already run and cleared by connection_lost
        protocol.hangup_hooks.remove(hook)


async def _discard(upstream: ClientResponse) -> None:
    """Read an unwanted answer to its end without keeping it, then pool the connection."""
    async for _ in upstream.content.iter_any():
        pass
    upstream.release()


def _origin_form(request: web.BaseRequest) -> str:
    """The request target to send upstream, byte for byte (RFC 9112 §3.2.1 origin-form).

    A client may send absolute-form (RFC 9112 §3.2.2); it is reduced to origin-form so the
    upstream sees what it would have seen directly.
    """
    target = request.raw_path
    if target.startswith("/"):
        return target
    return request.rel_url.raw_path_qs if request.rel_url.raw_path else "/"


class ClientBodyError(Exception):
    """The client's request body could not be forwarded; the reason is on the exchange."""


def _refuse(exchange: Exchange, rejection: Rejection) -> web.Response:
    """Answer a refusal and close: an unread body must never be parsed as a next request."""
    exchange.finish(Outcome.CLIENT_ERROR, rejection.status, rejection.reason)
    response = web.Response(status=rejection.status, text=rejection.body)
    response.force_close()
    return response


def _error_response(status: int, text: str) -> web.Response:
    """An answer the proxy makes itself: short text naming what went wrong."""
    return web.Response(status=status, text=f"{status} {text}\n")
