"""The client-facing connections: aiohttp's low-level server, hardened as a gate.

aiohttp's ``RequestHandler`` parses strictly, but four things are left to the application (read
in aiohttp 3.14's ``aiohttp/web_protocol.py`` and ``aiohttp/base_protocol.py``): it answers every
parse failure with a bare 400 and an error-level traceback (``data_received`` turns the
``HttpProcessingError`` into a 400 that ``handle_error`` logs through ``log_exception``); it has no
deadline for receiving a request's header block, its only timer being ``keepalive_timeout`` (a
slowloris client holds a connection forever); it waits for ever on a client that does not read
its answer (``BaseProtocol._drain_helper`` awaits its drain waiter unbounded); and it accepts any
number of connections. ``GateRequestHandler`` adds those:

* parse refusals get the status that names them (414, 431, 400; ``proxy.edge.gate``), a short text
  body, and one ``request_rejected`` log line without a traceback;
* a header deadline: from a connection's start, and from the first byte of each later request
  (``proxy.edge.heads`` sees it, even pipelined behind a running request), the whole header block
  must arrive within ``header_timeout``. Past it the connection is closed, with a 408 when some of
  the head had arrived; when a request is still running, its answer is completed first (it arrived
  in time), then the 408 follows and the connection closes;
* a send timeout: a client that accepts no byte of what it is sent for ``send_timeout`` seconds
  is cut (``send_timed_out`` is then True), which ends its exchange and closes the upstream
  connection (nginx's ``send_timeout``);
* a connection limit: past ``max_connections``, a new connection is answered 503 at once and
  closed, instead of queueing.

It relies on four attributes of aiohttp's ``RequestHandler`` (``_messages``,
``_request_in_progress``, ``_task_handler``, ``transport``) and on its ``finish_response`` hook;
aiohttp is pinned below 4 and the tests exercise each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from proxy.edge.coalesce import CoalescingTransport, EndOfTurn
from proxy.edge.gate import (
    CONNECTION_LIMIT,
    HEADER_TIMEOUT,
    Limits,
    Rejection,
    rejection_for_parse_error,
)
from proxy.edge.heads import HeadWatch
from proxy.wire.response import proxy_answer

RejectionSink = Callable[[Rejection, str | None], None]
"""Told of every refusal (logging and metrics): the rejection and the client's address."""


def canned_response(rejection: Rejection) -> bytes:
    """A complete close-delimited answer, for when there is no request object to answer."""
    body = rejection.body.encode()
    return (
        f"HTTP/1.1 {rejection.status} {_REASON_PHRASES.get(rejection.status, 'Error')}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


_REASON_PHRASES = {408: "Request Timeout", 503: "Service Unavailable"}


class GateServer(web.Server):
    """``web.Server`` whose connections are ``GateRequestHandler``s sharing one set of limits."""

    def __init__(
        self,
        handler: Any,
        *,
        limits: Limits,
        header_timeout: float,
        send_timeout: float,
        max_connections: int,
        on_reject: RejectionSink,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout
        self.max_connections = max_connections
        self.on_reject = on_reject
        self._write_batch: EndOfTurn | None = None

    @property
    def write_batch(self) -> EndOfTurn:
        """The one batch of client writes per turn, shared by all of this server's connections."""
        if self._write_batch is None:
            self._write_batch = EndOfTurn(self._loop)
        return self._write_batch

    def __call__(self) -> RequestHandler:
        return GateRequestHandler(self, loop=self._loop, **self._kwargs)


class GateRequestHandler(RequestHandler):
    def __init__(self, manager: GateServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = manager
        self._header_deadline: asyncio.TimerHandle | None = None
        self._heads: HeadWatch | None = HeadWatch()
        self._heads_seen = 0
        self._head_started = False
        self._head_overdue = False
        self._heads_in_time = 0
        self._answered = 0
        self._stall_check: asyncio.TimerHandle | None = None
        self._stalled_since = 0.0
        self._stalled_buffer = 0
        self.send_timed_out = False
        """True once this client was cut for accepting nothing for ``send_timeout`` seconds."""
        self.hangup_hooks: list[Callable[[], object]] = []
        """Run once, in the callback that learns the client left: ``eof_received`` for a FIN,
        inside the very read that saw it, or else ``connection_lost`` (a RST, which both loops
        report only through a queued ``connection_lost``). The forwarder closes the request's
        upstream connection here, before aiohttp cancels the handler, with no wait for a turn.
        A FIN is a hang-up even as a half-close: aiohttp closes the connection on it anyway
        (``RequestHandler.eof_received`` returns None, so asyncio closes the transport)."""
        self.on_carried_hangup: Callable[[], object] | None = None
        """Set while the running request is carried to the end: the client's leaving calls it
        (from ``connection_lost``) instead of letting aiohttp cancel the request's task, which
        ``RequestHandler.connection_lost`` does through the connection's task. The exchange
        then runs on in the task it started in: no second task per write (issue 16)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Every write aiohttp makes for this client leaves at the end of the turn
        # (proxy.edge.coalesce).
        real = cast("asyncio.Transport", transport)  # a stream transport: TCP or Unix
        super().connection_made(CoalescingTransport(real, self._gate.write_batch))
        if len(self._gate.connections) > self._gate.max_connections:
            self._refuse(CONNECTION_LIMIT)
            return
        self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_deadline()
        self._stop_stall_check()
        self._run_hangup_hooks()
        carried, self.on_carried_hangup = self.on_carried_hangup, None
        if carried is not None:
            # aiohttp cancels the connection's task, and so the handler it awaits, only through
            # this attribute (handler_cancellation): the connection's task then ends on its own
            # once the handler has returned (finish_response finds the client gone).
            self._task_handler = None
            carried()
        super().connection_lost(exc)

    def eof_received(self) -> None:
        self._run_hangup_hooks()
        super().eof_received()

    def _run_hangup_hooks(self) -> None:
        hooks, self.hangup_hooks = self.hangup_hooks, []
        for hook in hooks:
            hook()

    # --- the header deadline ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        heads = self._heads
        if heads is not None and not heads.follow(data):
            # An upgrade (the bytes are a tunnel's now) or bytes aiohttp refuses too.
            self._heads = heads = None
        if heads is None:
            self._watch_heads_without_watcher(data)
            return
        if heads.heads != self._heads_seen:
            # A head ended in these bytes: its deadline is met (or, once overdue, it came late).
            self._heads_seen = heads.heads
            self._disarm_header_deadline()
        if heads.in_head and self._header_deadline is None and not self._head_overdue:
            # A head began in these bytes (possibly behind a running request): its clock starts.
            self._arm_header_deadline()

    def _watch_heads_without_watcher(self, data: bytes) -> None:
        """Once the watcher cannot follow: a busy connection counts as having met its deadline."""
        if self._messages or self._request_in_progress:
            self._disarm_header_deadline()
            self._head_started = False
        elif data:
            self._head_started = True
            if self._header_deadline is None:
                self._arm_header_deadline()

    def _head_pending(self) -> bool:
        heads = self._heads
        return self._head_started if heads is None else heads.in_head

    def _arm_header_deadline(self) -> None:
        self._header_deadline = self._loop.call_later(
            self._gate.header_timeout, self._on_header_deadline
        )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _on_header_deadline(self) -> None:
        self._header_deadline = None
        if self.transport is None:
            return
        if self._messages or self._request_in_progress:
            heads = self._heads
            if heads is not None and heads.in_head:
                # A late head pipelined behind requests that came in time: those are answered
                # first, then the 408 (finish_response). Completing the head later does not
                # excuse it.
                self._head_overdue = True
                self._heads_in_time = heads.heads
            return
        if self._head_pending():
            self._refuse(HEADER_TIMEOUT)
        else:
            # Connected and silent: nothing to answer; close as nginx's client_header_timeout does.
            self.transport.close()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._answered += 1
        if self._head_overdue and self._answered >= self._heads_in_time:
            # The last request that came in time is answered whole; the late head gets its 408.
            self._refuse(HEADER_TIMEOUT)
            self.close()
        return result

    # --- the send timeout ---------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        transport = self.transport
        if transport is None:
            return
        self._stalled_since = self._loop.time()
        self._stalled_buffer = transport.get_write_buffer_size()
        self._schedule_stall_check()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_stall_check()

    def _schedule_stall_check(self) -> None:
        # Looked at four times per timeout: the cut comes within a quarter of it after the last
        # byte the client accepted, and a client that reads slowly but steadily is never cut.
        self._stall_check = self._loop.call_later(self._gate.send_timeout / 4, self._check_stall)

    def _stop_stall_check(self) -> None:
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None

    def _check_stall(self) -> None:
        self._stall_check = None
        transport = self.transport
        if transport is None:
            return
        waiting = transport.get_write_buffer_size()
        now = self._loop.time()
        if waiting < self._stalled_buffer:
            self._stalled_since = now  # the client took some bytes
        self._stalled_buffer = waiting
        if now - self._stalled_since < self._gate.send_timeout:
            self._schedule_stall_check()
            return
        self.send_timed_out = True
        # Aborted, not closed: a close would wait for the client to take what is queued.
        transport.abort()

    def _refuse(self, rejection: Rejection) -> None:
        transport = self.transport
        if transport is None:
            return
        peer = transport.get_extra_info("peername")
        self._gate.on_reject(rejection, peer[0] if peer else None)
        transport.write(canned_response(rejection))
        transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            # A fault in our own handler: keep aiohttp's error log with its traceback.
            return super().handle_error(request, status, exc, message)
        rejection = rejection_for_parse_error(exc, self._gate.limits)
        self._gate.on_reject(rejection, request.remote)
        return proxy_answer(rejection.status, rejection.text, close=True)
