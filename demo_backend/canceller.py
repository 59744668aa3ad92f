"""The per-connection ASGI wrapper that knows which of its requests may be cancelled.

One ``ConnectionCanceller`` wraps the ASGI app for one HTTP connection (see ``protocol.py`` for
how it is installed and why). It is a pure-ASGI middleware in Starlette's four-part shape: it
records each HTTP request's task, watches ``send`` for the end of the response, and on
``connection_lost`` cancels only the requests that are still answering and whose method the
policy lets it cancel. It swallows exactly the cancellations it caused.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from demo_backend import hangup_signal
from demo_backend.cancel_methods import should_cancel
from demo_backend.request_id import request_id_from_headers

HANGUP_CANCEL_MESSAGE = "client hung up"

# Messages after which the app has handed over its whole answer. ``pathsend`` and ``zerocopysend``
# are ASGI extensions that uvicorn does not offer today; recognising them costs nothing.
_BODY_MESSAGES = ("http.response.body", "http.response.zerocopysend")


def is_final_response_message(message: Message) -> bool:
    """Whether ``message`` is the app's last word on this response."""
    if message["type"] == "http.response.pathsend":
        return True
    return message["type"] in _BODY_MESSAGES and not message.get("more_body", False)


def _logger() -> Any:
    # Looked up per call, not cached at import: structlog's cache_logger_on_first_use would freeze
    # a module-level logger on the first configuration it saw, and tests reconfigure.
    return structlog.get_logger()


@dataclass(eq=False)
class InFlightRequest:
    """One HTTP request of the connection, from the app's first step until it returns."""

    task: asyncio.Task[Any]
    method: str
    path: str
    request_id: str
    cancellable: bool
    response_complete: bool = False
    cancelled_on_hangup: bool = False
    hung_up: threading.Event = field(default_factory=threading.Event)
    """Set with the cancel: what a thread of this request reads (``demo_backend.hangup_signal``)."""

    def should_cancel_on_hangup(self) -> bool:
        # A complete response means the client got its answer: what the task does now (Starlette
        # BackgroundTasks) is the server's own business and must survive the hang-up
        # (Kludex/starlette#1438 is the same bug, fixed in Starlette's BaseHTTPMiddleware).
        return self.cancellable and not self.response_complete and not self.task.done()

    def cancel_on_hangup(self) -> None:
        # The event first: a thread that returns because of it finds the task already cancelled.
        self.hung_up.set()
        self.cancelled_on_hangup = self.task.cancel(msg=HANGUP_CANCEL_MESSAGE)

    def absorb_own_cancellation(self) -> bool:
        """Take back our cancel request; true when nobody else asked the task to stop too.

        ``uncancel`` (Python 3.11) counts pending cancel requests: if uvicorn's graceful-shutdown
        timeout (or anything else) also cancelled the task, the count stays above zero and the
        ``CancelledError`` must keep propagating.
        """
        return self.cancelled_on_hangup and self.task.uncancel() == 0

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

    def __init__(self, app: ASGIApp, cancel_methods: frozenset[str]) -> None:
        self.app = app
        self.cancel_methods = cancel_methods
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
            cancellable=should_cancel(scope["method"], self.cancel_methods),
        )
        self._in_flight.add(request)
        signal_token = hangup_signal.bind(request.hung_up)
        try:
            await self.app(scope, receive, request.watch(send))
        except asyncio.CancelledError:
            if not request.absorb_own_cancellation():
                raise
            # An expected outcome, not an error: one line, no traceback. Returning normally keeps
            # uvicorn's run_asgi from logging "Exception in ASGI application".
            _logger().info(
                "handler_cancelled",
                request_id=request.request_id,
                method=request.method,
                path=request.path,
            )
        finally:
            hangup_signal.unbind(signal_token)
            self._in_flight.discard(request)

    def connection_lost(self) -> None:
        """Cancel every request of this connection whose response is incomplete and cancellable."""
        for request in self._in_flight:
            if request.should_cancel_on_hangup():
                request.cancel_on_hangup()

    def in_flight_count(self) -> int:
        return len(self._in_flight)
