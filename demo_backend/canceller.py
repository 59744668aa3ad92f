"""The per-connection ASGI wrapper that knows which of its requests may be cancelled.

One ``ConnectionCanceller`` wraps the ASGI app for one HTTP connection (see ``protocol.py`` for
how it is installed and why). It is a pure-ASGI middleware in Starlette's four-part shape: it
records each HTTP request's task, hands the app the server's own ``receive`` and ``send``, and on
``connection_lost`` cancels only the requests that are still answering (the server has not taken
their last message) and that the policy lets it cancel: the proxy's ``Hangup-Decision`` when
trusted (``proxy.policy.decision_header``), else the method list. It swallows exactly the
cancellations it caused.

Theory of operation: a cancel scope that costs nothing until it is cancelled
--------------------------------------------------------------------------------
The hang-up must cancel the app as an anyio ``CancelScope`` around it would: Starlette waits for a
``def`` endpoint's thread (``anyio.to_thread.run_sync``) inside a scope shielded against anyio
cancellation only, and a native ``Task.cancel`` went straight through that shield (observed with
anyio 4.16: the task unwound and logged ``handler_cancelled`` while the thread still worked). But
entering and leaving a real scope costs every request more than the rest of this wrapper together
(about 36,000 instructions, a twelfth of uvicorn's whole request; issue 16), and almost no request
is ever cancelled. So a request pays only for a small record, and the scope's behaviour is built
at hang-up time, from ``CancelScope._deliver_cancellation`` (anyio 4.16), for the one task:

- The task is cancelled at its next ``await`` and again at every one after it, one loop iteration
  apart, until the app returns: level-triggered, as a cancelled scope is. A task whose awaited
  future already holds its result is left to take it first (a lock acquired is not lost).
- While anyio shields the task (``is_shielded_by_anyio``: a shielded scope anywhere in its chain
  of anyio scopes), nothing is delivered; the next try comes when the future it awaits is done.
  For a ``def`` endpoint that is the thread's return, so the cancel lands at the next ``await``
  after it, as the scope's did.
- When the app ends, the wrapper takes back (``Task.uncancel``) every cancel it delivered and
  swallows the ``CancelledError`` only when it carries the hang-up's message and no other
  cancellation is pending: another party's, such as uvicorn's ``timeout_graceful_shutdown``,
  propagates even when it lands in the same loop turn (the check of agronholm/anyio#1214).

What a real scope gave that this does not: nested anyio scopes do not see a cancelled parent, so
``anyio.from_thread.check_cancelled()`` in the thread stays quiet (``hangup_signal`` is what the
thread reads) and the hang-up's cancel reaches the task only, not children of a task group the app
runs (anyio's task group cancels them itself when the host task is cancelled).

A signal that does not wake the garbage collector
-------------------------------------------------
CPython starts a collection of its youngest generation when allocations of tracked objects exceed
deallocations by 700 (``gc.get_threshold()``); a collection promotes what is alive to the older
generations, and each full collection then scans the whole heap. Under load uvicorn with FastAPI
keeps about ten tracked objects alive per request in flight, so at 64 connections it stays just
under the threshold and hardly collects at all while serving. A few more objects alive per request
push it over: binding each request's ``HangupSignal`` with ``ContextVar.set`` inside its task
(three objects: the token, the context's new mapping and its node) took one server from about 160
collections in four seconds of load to about 1,100, nine of them full: a tenth of its time
(``gc.callbacks``, issue 16).

So the signal is bound where it costs nothing per request. A task copies the context that is
current where it is created, and uvicorn creates a request's task inside the ``data_received``
call that read its head; asyncio and uvloop run all of a transport's protocol callbacks in one
context of its own (the leak python/cpython#140947 describes, and uvicorn's ``reset_contextvars``
opts out of). The protocol calls ``unclaimed_signal`` there first, and the task inherits the
signal with the copy. The wrapper claims it for its request and, once the app has returned
without a hang-up, gives it back: the connection's next request takes the same signal, and a
keep-alive connection allocates and binds one signal in its life. A signal that saw a hang-up is
never given back, and a request that finds the signal still claimed (request N's background work
outlives the head of request N+1), or none (a pipelined request, which uvicorn starts from the
previous request's task; ``reset_contextvars``; the wrapper without the protocol) binds a fresh
one in its own task. What the reuse costs: a thread that outlives its request's app (started
without being awaited, in a copy of its context) reads the signal of a later request on the same
connection, whose hang-up is the same client's.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from anyio._backends._asyncio import _task_states as anyio_task_states
from starlette.types import ASGIApp, Receive, Scope, Send

from demo_backend import hangup_signal
from demo_backend.request_id import request_id_from_headers
from proxy.policy.decision_header import decided_cancellable
from proxy.policy.methods import CancelPolicy

HANGUP_CANCEL_MESSAGE = "client hung up"

# The task running on a loop, given the loop. Python 3.11's ``asyncio.current_task`` is this very
# lookup inside a Python function (Lib/asyncio/tasks.py), a frame that cost every request about
# 1,300 instructions; 3.12 made it C (python/cpython#100344), so it is used as is from there on.
_task_running_on: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]
    if sys.version_info < (3, 12)
    else asyncio.current_task
)


def is_shielded_by_anyio(task: asyncio.Task[Any]) -> bool:
    """Whether an anyio scope shields ``task`` now: where a cancelled parent scope holds back.

    anyio keeps no public record of another task's scopes; this reads its asyncio backend's (the
    same reads ``CancelScope._effectively_cancelled`` makes). Only a hang-up calls it.
    """
    state = anyio_task_states.get(task)
    scope = state.cancel_scope if state is not None else None
    while scope is not None:
        if scope.shield:
            return True
        scope = scope._parent_scope
    return False


def is_hangup_cancellation(exc: BaseException | None) -> bool:
    """Whether the hang-up's cancel raised ``exc``, or the ``CancelledError`` it replaced."""
    # The chain: code that catches a CancelledError and raises a new one (anyio looks there too).
    while isinstance(exc, asyncio.CancelledError):
        if exc.args and exc.args[0] == HANGUP_CANCEL_MESSAGE:
            return True
        exc = exc.__context__
    return False


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
    # The id is read here, not per request: only this line needs it (a fresh one when absent).
    request_id = request_id_from_headers(request.headers)
    fields = {"request_id": request_id, "method": request.method, "path": request.path}
    # The message reads on its own under any format; the extras are the same facts, structured.
    _log.info(
        "%s request_id=%s method=%s path=%s",
        HANDLER_CANCELLED,
        request_id,
        request.method,
        request.path,
        extra={"event": HANDLER_CANCELLED, **fields},
    )


class RequestSignal(hangup_signal.HangupSignal):
    """A request's ``HangupSignal`` as the canceller binds it: claimed by one request at a time.

    It holds no reference to anything, so the connection's context keeps it, from one request to
    the next (module docstring: a signal that does not wake the garbage collector).
    """

    __slots__ = ("claimed",)

    def __init__(self) -> None:
        self.hung_up = False
        # Whether a request's app is running with it; False again once the app returned unharmed.
        self.claimed = False


def unclaimed_signal() -> RequestSignal:
    """The signal this context holds for a request yet to claim it; bound here when there is none.

    The protocol calls it before uvicorn reads bytes that may start a request, so that the task
    started for them inherits one; the wrapper calls it in the task and claims what it returns
    (``InFlightRequest``).
    """
    signal = hangup_signal.bound()
    if not isinstance(signal, RequestSignal) or signal.claimed:
        signal = RequestSignal()
        hangup_signal.bind(signal)
    return signal


class InFlightRequest:
    """One HTTP request of the connection, from the app's first step until it returns.

    ``signal`` is the request's ``HangupSignal``: its threads read it (``hangup_signal``). The
    fields of the cancel's delivery are set by the hang-up (``cancel_on_hangup``): a request that is
    never cancelled pays for this one object and its signal, nothing more.
    """

    __slots__ = (
        "_cancelling_at_enter",
        "_cancels",
        "app_returned",
        "headers",
        "method",
        "path",
        "send",
        "signal",
        "task",
    )

    def __init__(
        self, task: asyncio.Task[Any], scope: Scope, send: Send, signal: RequestSignal
    ) -> None:
        self.task = task
        # Taken now, as the server parsed them: middleware may rewrite the scope in place.
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        # The server's own send, handed to the app untouched (response_complete says why).
        self.send = send
        signal.claimed = True
        self.signal = signal
        # Before the app's first step: a cancel already requested is someone else's.
        self._cancelling_at_enter = task.cancelling()

    def response_complete(self) -> bool:
        """Whether the server has taken the app's last message of this response.

        Read from the server at hang-up time rather than watched message by message: a ``send``
        wrapper cost every request about 4,500 instructions, 1 % of uvicorn's request (issue 16).
        uvicorn's ``send`` is its ``RequestResponseCycle``'s bound method, and the cycle sets
        ``response_complete`` in the same call that writes the final body (h11 and httptools
        alike). A final message still waiting for a slow client to drain the socket is not
        complete: that client never had its answer. A ``send`` that is not a bound method of
        something with the flag (not uvicorn's) counts as never complete.
        """
        cycle = getattr(self.send, "__self__", None)
        return getattr(cycle, "response_complete", False) is True

    def is_unanswered(self) -> bool:
        # A complete response means the client got its answer: what the task does now (Starlette
        # BackgroundTasks) is the server's own business and must survive the hang-up
        # (Kludex/starlette#1438 is the same bug, fixed in Starlette's BaseHTTPMiddleware).
        return not self.response_complete() and not self.task.done()

    def cancel_on_hangup(self) -> None:
        if self.signal.hung_up:
            return
        # The flag first: a thread that returns because of it finds the task being cancelled.
        self.signal.hung_up = True
        # Set once the app has returned or raised: from then on nothing is delivered.
        self.app_returned = False
        # Cancels delivered and not yet taken back (Task.uncancel).
        self._cancels = 0
        self._deliver()

    def _deliver(self, _: object = None) -> None:
        # One try of a cancelled scope's delivery (module docstring); it schedules the next.
        task = self.task
        if self.app_returned or task.done():
            return
        waiter = task._fut_waiter  # type: ignore[attr-defined]
        if is_shielded_by_anyio(task):
            if isinstance(waiter, asyncio.Future) and not waiter.done():
                # Nothing can change while the task waits: try again once it wakes.
                waiter.add_done_callback(self._deliver)
                return
        elif not task._must_cancel and (  # type: ignore[attr-defined]
            not isinstance(waiter, asyncio.Future) or not waiter.done()
        ):
            task.cancel(HANGUP_CANCEL_MESSAGE)
            self._cancels += 1
        task.get_loop().call_soon(self._deliver)

    def settle(self, exc: BaseException | None = None) -> bool:
        """After a hang-up, the app has ended (with ``exc``): stop delivering, take back cancels.

        True when ``exc`` is the hang-up's cancellation and no one else's is pending: the
        wrapper swallows it then, as a cancelled scope does its own.
        """
        self.app_returned = True
        task = self.task
        delivered = self._cancels
        self._cancels = 0
        for _ in range(delivered):
            task.uncancel()
        return (
            delivered > 0
            and is_hangup_cancellation(exc)
            and task.cancelling() <= self._cancelling_at_enter
        )


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
        task = _task_running_on(asyncio.get_running_loop())
        if task is None:  # pragma: no cover - an ASGI server always runs the app inside a task
            await self.app(scope, receive, send)
            return
        signal = unclaimed_signal()
        request = InFlightRequest(task, scope, send, signal)
        self._in_flight.add(request)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError as exc:
            if not (signal.hung_up and request.settle(exc)):
                raise
        finally:
            self._in_flight.discard(request)
            if signal.hung_up:
                request.settle()
            else:
                # The app has returned unharmed: the connection's next request may take the
                # same signal (module docstring: a signal that does not wake the GC).
                signal.claimed = False
        if signal.hung_up:
            # Only here, once the app has returned: the handler, and a `def` endpoint's thread
            # with it, has stopped. An expected outcome, not an error: one line, no traceback.
            # Returning normally keeps run_asgi from logging "Exception in ASGI application".
            log_handler_cancelled(request)

    def is_cancellable(self, scope: Scope) -> bool:
        """The proxy's ``Hangup-Decision`` when trusted and present, else the method list."""
        return self.should_cancel(scope["method"], scope["headers"])

    def should_cancel(self, method: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        # Asked at hang-up time only: a request that is never hung up on never pays for it.
        if self.trust_decision_header:
            decided = decided_cancellable(headers)
            if decided is not None:
                return decided
        return self._policy.should_cancel(method)

    def connection_lost(self) -> None:
        """Cancel every request of this connection whose response is incomplete and cancellable."""
        for request in self._in_flight:
            if request.is_unanswered() and self.should_cancel(request.method, request.headers):
                request.cancel_on_hangup()

    def in_flight_count(self) -> int:
        return len(self._in_flight)
