"""uvicorn HTTP protocols that cancel a request's handler when its client hangs up.

Use them from the command line with any ASGI app (``HANGUP_CANCEL_METHODS`` sets the policy, and
``HANGUP_TRUST_DECISION_HEADER=1`` makes the proxy's per-request decision win, see
``proxy.policy.decision_header``)::

    uvicorn --http demo_backend.protocol:CancellingHttpToolsProtocol yourapp:app

or from code with ``uvicorn.Config(app, http=cancelling_protocol("httptools", methods))``.

Theory of operation
-------------------
uvicorn never cancels a request task on disconnect: ``connection_lost`` only sets
``cycle.disconnected`` and wakes ``receive()``, which then answers ``http.disconnect``; a handler
that is not reading its body (sleeping, awaiting a database) never learns. These subclasses add the
missing step (one mixin, ``ConnectionCancelling``, for both) without touching uvicorn's shared
state:

1. In ``connection_made`` (one protocol instance per TCP connection, called before its first
   byte is read) ``self.app`` is replaced by a ``ConnectionCanceller`` wrapping it. uvicorn reads
   ``self.app`` when it starts each request task, ``loop.create_task(cycle.run_asgi(app))``
   (``H11Protocol.handle_events``; ``HttpToolsProtocol.on_headers_complete``, also for requests
   queued in ``self.pipeline``), so the wrapper is the outermost ASGI layer of every request of
   this connection, and only of it. The server-wide ``self.tasks`` set is left alone, so
   ``--limit-concurrency`` (which calls ``len(self.tasks)``) keeps working.
2. The wrapper runs inside the request task: ``asyncio.current_task()`` is that task. It records
   the task with the method, path and headers (the request id is read from them only for the log
   line) and uvicorn's ``send``, and passes the app uvicorn's own ``receive`` and ``send``: whether
   the response is complete is read at hang-up time from the ``RequestResponseCycle`` that
   ``send`` belongs to (``InFlightRequest.response_complete``). The request's ``HangupSignal``,
   which its threads read, comes with the task's context: ``data_received`` binds one in the
   connection's context before uvicorn parses the bytes and starts the task
   (``canceller.unclaimed_signal``: no object per request for the garbage collector to count).
3. ``connection_lost`` (FIN, RST, or half-close: uvicorn's ``eof_received`` returns None) first
   lets uvicorn do its own bookkeeping, then cancels the recorded tasks whose response is
   incomplete and that the policy cancels: by the proxy's ``Hangup-Decision`` when it is trusted
   and present, else by method. A complete response is never cancelled: the
   task may be running Starlette ``BackgroundTasks`` after a client that read its answer and left,
   sent ``Connection: close``, or was closed by a graceful shutdown (``Server.shutdown`` closes
   idle connections, which calls ``connection_lost``) -- Starlette fixed exactly this bug in its
   own middleware (Kludex/starlette#1438). On a keep-alive connection request N's background work
   is not touched by a hang-up during request N+1.
4. The hang-up cancels the app as an anyio ``CancelScope`` around it would, built only when a
   hang-up comes (``canceller`` module docstring: a real scope per request cost more than the
   rest of the wrapper): Starlette's wait for a ``def`` endpoint's thread is shielded against
   anyio cancellation only, so the cancel is held until the thread returns. The wrapper swallows
   the ``CancelledError`` it caused (and ``uncancel``s it); once the app has returned, it logs one
   ``handler_cancelled`` record on the stdlib logger ``hangup.cancel``. Anything else -- another
   party's cancellation such as uvicorn's ``timeout_graceful_shutdown`` -- propagates, and
   uvicorn's ``run_asgi`` reports it as before.

The request task is always registered before its connection can be lost: ``create_task`` schedules
the task's first step with ``call_soon`` while uvicorn handles the request head, and asyncio's and
uvloop's transports deliver ``connection_lost`` through ``call_soon`` too, later in FIFO order.

Relies on uvicorn internals (``self.app``, ``connection_made``, ``data_received``,
``connection_lost``); pyproject pins uvicorn to the range that the tests exercise with both h11 and
httptools. On a hang-up only, it also reads anyio's record of a task's cancel scopes
(``canceller.is_shielded_by_anyio``).

Known limitations
-----------------
- Above 64 KiB of unread request body (``flow_control.HIGH_WATER_LIMIT``) uvicorn pauses reading,
  and a paused transport does not see FIN or RST: a hang-up during a large upload that the handler
  has not read yet is noticed only when the handler reads (or never, if it never does).
- Cancelling stops ``async`` code at its next ``await``, and, as in a cancelled anyio scope, at
  every ``await`` after it until the handler returns: shield clean-up that must wait. A ``def``
  endpoint runs in a thread pool and keeps running until it returns (``hangup_signal`` lets it
  look); a database driver may be left mid-transaction (benoitc/gunicorn#3485 added a
  grace period before cancelling for this reason). Keep writes out of the cancel policy.
- Only ``http`` scopes are affected; WebSocket and lifespan scopes pass straight through.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal, TypeVar, cast

from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from demo_backend.cancel_methods import cancel_methods_from_env, trust_decision_header_from_env
from demo_backend.canceller import ConnectionCanceller, unclaimed_signal
from demo_backend.environment import value_or_exit

HttpImplementation = Literal["h11", "httptools"]

# Read once at import, so `uvicorn --http demo_backend.protocol:CancellingH11Protocol` is configured
# by the environment alone; a bad value ends the process with one line naming the variable, exit 3
# (demo_backend.environment.value_or_exit).
_CANCEL_METHODS_FROM_ENV = value_or_exit(cancel_methods_from_env)
_TRUST_DECISION_HEADER_FROM_ENV = value_or_exit(trust_decision_header_from_env)


class ConnectionCancelling(asyncio.Protocol):
    """The cancelling half of both protocols below; the other half is uvicorn's (module docstring).

    Listed first among the bases, so that its ``connection_made`` and ``connection_lost`` run
    around uvicorn's own: ``class P(ConnectionCancelling, H11Protocol)``.
    """

    cancel_methods: ClassVar[frozenset[str]] = _CANCEL_METHODS_FROM_ENV
    trust_decision_header: ClassVar[bool] = _TRUST_DECISION_HEADER_FROM_ENV

    app: ASGIApp
    """uvicorn's: the app it starts each request of this connection with."""
    canceller: ConnectionCanceller

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.canceller = ConnectionCanceller(
            self.app, self.cancel_methods, trust_decision_header=self.trust_decision_header
        )
        self.app = self.canceller

    def data_received(self, data: bytes) -> None:
        # A request whose head is in these bytes gets its task here, and the task inherits this
        # context's signal (canceller module docstring: a signal that does not wake the GC).
        unclaimed_signal()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.canceller.connection_lost()


class CancellingH11Protocol(ConnectionCancelling, H11Protocol):
    """uvicorn's h11 protocol, plus: a hang-up cancels the unanswered request (module docstring)."""


class CancellingHttpToolsProtocol(ConnectionCancelling, HttpToolsProtocol):
    """uvicorn's httptools protocol, plus: a hang-up cancels the unanswered request."""


# uvicorn's own "auto" picks httptools when it is importable; uvicorn[standard], which we depend
# on, always installs it, so the auto choice is fixed here rather than probed.
CancellingAutoProtocol = CancellingHttpToolsProtocol


_P = TypeVar("_P", CancellingH11Protocol, CancellingHttpToolsProtocol)


def with_policy(
    protocol: type[_P],
    cancel_methods: frozenset[str] | None = None,
    trust_decision_header: bool | None = None,
) -> type[_P]:
    """A subclass of ``protocol`` with this policy; None keeps the environment's choice."""
    namespace: dict[str, object] = {"__module__": __name__}
    if cancel_methods is not None:
        namespace["cancel_methods"] = cancel_methods
    if trust_decision_header is not None:
        namespace["trust_decision_header"] = trust_decision_header
    if len(namespace) == 1:
        return protocol
    return cast("type[_P]", type(protocol.__name__, (protocol,), namespace))


def cancelling_protocol(
    http: HttpImplementation,
    cancel_methods: frozenset[str] | None = None,
    trust_decision_header: bool | None = None,
) -> type[CancellingH11Protocol | CancellingHttpToolsProtocol]:
    """The protocol class to hand to ``uvicorn.Config(http=...)``.

    ``cancel_methods`` and ``trust_decision_header`` of None keep the ``HANGUP_CANCEL_METHODS`` and
    ``HANGUP_TRUST_DECISION_HEADER`` (or default) policy.
    """
    if http == "h11":
        return with_policy(CancellingH11Protocol, cancel_methods, trust_decision_header)
    return with_policy(CancellingHttpToolsProtocol, cancel_methods, trust_decision_header)
