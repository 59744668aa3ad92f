"""The per-connection ASGI wrapper that knows which of its requests may be cancelled.

One ``ConnectionCanceller`` wraps the ASGI app for one HTTP connection (see ``protocol.py`` for
how it is installed and why). It is a pure-ASGI middleware in Starlette's four-part shape: it
records each HTTP request's task, watches ``send`` for the end of the response, and on
``connection_lost`` cancels only the requests that are still answering and that the policy lets
it cancel: the proxy's ``Hangup-Decision`` when trusted (``proxy.policy.decision_header``), else the
method list. It swallows exactly the cancellations it caused.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from demo_backend import hangup_signal
from demo_backend.request_id import request_id_from_headers
from proxy.policy.decision_header import decided_cancellable
from proxy.policy.methods import CancelPolicy

HANGUP_CANCEL_MESSAGE = "client hung up"

# Messages after which the app has handed over its whole answer. ``pathsend`` and ``zerocopysend``
# are ASGI extensions that uvicorn does not offer today; recognising them costs nothing.
_BODY_MESSAGES = ("http.response.body", "http.response.zerocopysend")


def is_final_response_message(message: Message) -> bool:
    """Whether ``message`` is the app's last word on this response."""
    if message["type"] == "http.response.pathsend":
        return True
    return message["type"] in _BODY_MESSAGES and not message.get("more_body", False)


LOGGER_NAME = "hangup.cancel"
"""The stdlib logger of the cancelling protocol: one INFO record per handler cancelled on hang-up.

A library logs through ``logging`` and leaves handlers to the application: under plain uvicorn
the record follows ``--log-config`` (or the app's ``dictConfig``); ``hangup-demo-backend`` routes
it through its structlog pipeline (``proxy.logs.configure``), where the record's ``event`` extra
names the JSON line. Each record carries ``request_id``, ``method`` and ``path`` as attributes, for
format strings such as ``%(request_id)s``.
"""
_log = logging.getLogger(LOGGER_NAME)
HANDLER_CANCELLED = "handler_cancelled"


def log_handler_cancelled(request: InFlightRequest) -> None:
    fields = {"request_id": request.request_id, "method": request.method, "path": request.path}
    # The message reads on its own under any format; the extras are the same facts, structured.
    _log.info(
        "%s request_id=%s method=%s path=%s",
        HANDLER_CANCELLED,
        request.request_id,
        request.method,
        request.path,
        extra={"event": HANDLER_CANCELLED, **fields},
    )


@dataclass(eq=False)
class InFlightRequest:
    """One HTTP request of the connection, from the app's first step until it returns."""

    task: asyncio.Task[Any]
    method: str
    path: str
    request_id: str
    cancellable: bool
    response_complete: bool = False
    hung_up: threading.Event = field(default_factory=threading.Event)
    """Set with the cancel: what a thread of this request reads (``demo_backend.hangup_signal``)."""
    cancel_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    """The app runs inside it; the hang-up cancels it (``ConnectionCanceller.__call__``)."""

    def should_cancel_on_hangup(self) -> bool:
        # A complete response means the client got its answer: what the task does now (Starlette
        # BackgroundTasks) is the server's own business and must survive the hang-up
        # (Kludex/starlette#1438 is the same bug, fixed in Starlette's BaseHTTPMiddleware).
        return self.cancellable and not self.response_complete and not self.task.done()

    def cancel_on_hangup(self) -> None:
        # The event first: a thread that returns because of it finds the task already cancelled.
        self.hung_up.set()
        # anyio's cancel, not Task.cancel: Starlette runs a `def` endpoint with
        # anyio.to_thread.run_sync, whose wait is shielded against anyio cancellation only. A
        # native Task.cancel went straight through that shield (observed with anyio 4.16): the
        # task unwound and logged handler_cancelled while the thread was still working. The scope's
        # cancel is held until the thread returns, then delivered at the next await.
        self.cancel_scope.cancel(HANGUP_CANCEL_MESSAGE)

    @property
    def cancelled_on_hangup(self) -> bool:
        # Only cancel_on_hangup cancels this scope: the scope itself remembers it.
        return self.cancel_scope.cancel_called

    def watch(self, send: Send) -> Send:
        async def watched_send(message: Message) -> None:
            if is_final_response_message(message):
                # Marked when the app hands the message over, before the server writes it: from
                # here on nothing the app does is part of answering this client.
                self.response_complete = True
            await send(message)

        return watched_send


class ConnectionCanceller:
    """ASGI wrapper owned by one connection; ``connection_lost`` cancels its unanswered requests."""

    def __init__(
        self, app: ASGIApp, cancel_methods: frozenset[str], *, trust_decision_header: bool = False
    ) -> None:
        self.app = app
        self._policy = CancelPolicy.from_names(cancel_methods)
        self.trust_decision_header = trust_decision_header
        # Keep-alive runs requests one after another, but request N can still be running its
        # background work while request N+1 is answered: each has its own entry.
        self._in_flight: set[InFlightRequest] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - an ASGI server always runs the app inside a task
            await self.app(scope, receive, send)
            return
        request = InFlightRequest(
            task=task,
            method=scope["method"],
            path=scope["path"],
            request_id=request_id_from_headers(scope["headers"]),
            cancellable=self.is_cancellable(scope),
        )
        self._in_flight.add(request)
        signal_token = hangup_signal.bind(request.hung_up)
        try:
            # The scope swallows exactly the cancellation it delivered and un-counts it
            # (Task.uncancel). A cancel from anyone else, such as uvicorn's graceful-shutdown
            # timeout, propagates, even when it lands in the same loop turn as ours (anyio's
            # CancelScope.__exit__, agronholm/anyio#1214): uvicorn's run_asgi reports it as before.
            with request.cancel_scope:
                await self.app(scope, receive, request.watch(send))
        finally:
            hangup_signal.unbind(signal_token)
            self._in_flight.discard(request)
        if request.cancelled_on_hangup:
            # Only here, once the app has returned: the handler, and a `def` endpoint's thread
            # with it, has stopped. An expected outcome, not an error: one line, no traceback.
            # Returning normally keeps run_asgi from logging "Exception in ASGI application".
            log_handler_cancelled(request)

    def is_cancellable(self, scope: Scope) -> bool:
        """The proxy's ``Hangup-Decision`` when trusted and present, else the method list."""
        if self.trust_decision_header:
            decided = decided_cancellable(scope["headers"])
            if decided is not None:
                return decided
        return self._policy.should_cancel(scope["method"])

    def connection_lost(self) -> None:
        """Cancel every request of this connection whose response is incomplete and cancellable."""
        for request in self._in_flight:
            if request.should_cancel_on_hangup():
                request.cancel_on_hangup()

    def in_flight_count(self) -> int:
        return len(self._in_flight)
