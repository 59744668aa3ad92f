"""uvicorn HTTP protocols that cancel a request's handler when its client hangs up.

Use them from the command line with any ASGI app (``HANGUP_CANCEL_METHODS`` sets the policy)::

    uvicorn --http demo_backend.protocol:CancellingHttpToolsProtocol yourapp:app

or from code with ``uvicorn.Config(app, http=cancelling_protocol("httptools", methods))``.

Theory of operation
-------------------
uvicorn never cancels a request task on disconnect: ``connection_lost`` only sets
``cycle.disconnected`` and wakes ``receive()``, which then answers ``http.disconnect``; a handler
that is not reading its body (sleeping, awaiting a database) never learns. These subclasses add the
missing step without touching uvicorn's shared state:

1. In ``__init__`` (one protocol instance per TCP connection) ``self.app`` is replaced by a
   ``ConnectionCanceller`` wrapping it. uvicorn reads ``self.app`` when it starts each request task,
   ``loop.create_task(cycle.run_asgi(app))`` (``H11Protocol.handle_events``;
   ``HttpToolsProtocol.on_headers_complete``, also for requests queued in ``self.pipeline``), so
   the wrapper is the outermost ASGI layer of every request of this connection, and only of it.
   The server-wide ``self.tasks`` set is left alone, so ``--limit-concurrency`` (which calls
   ``len(self.tasks)``) keeps working.
2. The wrapper runs inside the request task: ``asyncio.current_task()`` is that task. It records
   the task with the method, path and request id, and wraps ``send`` to note when the app hands
   over the final ``http.response.body`` (``more_body`` false) or ``http.response.pathsend``.
3. ``connection_lost`` (FIN, RST, or half-close: uvicorn's ``eof_received`` returns None) first
   lets uvicorn do its own bookkeeping, then cancels the recorded tasks whose response is
   incomplete and whose method the policy cancels. A complete response is never cancelled: the
   task may be running Starlette ``BackgroundTasks`` after a client that read its answer and left,
   sent ``Connection: close``, or was closed by a graceful shutdown (``Server.shutdown`` closes
   idle connections, which calls ``connection_lost``) -- Starlette fixed exactly this bug in its
   own middleware (Kludex/starlette#1438). On a keep-alive connection request N's background work
   is not touched by a hang-up during request N+1.
4. The wrapper catches the ``CancelledError`` it caused, takes its request back with
   ``Task.uncancel()`` and logs one ``handler_cancelled`` line. Anything else -- another party's
   cancellation such as uvicorn's ``timeout_graceful_shutdown`` -- propagates, and uvicorn's
   ``run_asgi`` reports it as before.

The request task is always registered before its connection can be lost: ``create_task`` schedules
the task's first step with ``call_soon`` while uvicorn handles the request head, and asyncio's and
uvloop's transports deliver ``connection_lost`` through ``call_soon`` too, later in FIFO order.

Relies on uvicorn internals (``self.app``, ``connection_lost``); pyproject pins uvicorn to the
range that the tests exercise with both h11 and httptools.

Known limitations
-----------------
- Above 64 KiB of unread request body (``flow_control.HIGH_WATER_LIMIT``) uvicorn pauses reading,
  and a paused transport does not see FIN or RST: a hang-up during a large upload that the handler
  has not read yet is noticed only when the handler reads (or never, if it never does).
- Cancelling stops ``async`` code at its next ``await``. A ``def`` endpoint runs in a thread pool
  and keeps running; a database driver may be left mid-transaction (benoitc/gunicorn#3485 added a
  grace period before cancelling for this reason). Keep writes out of the cancel policy.
- Only ``http`` scopes are affected; WebSocket and lifespan scopes pass straight through.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal, TypeVar, cast

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from demo_backend.cancel_methods import cancel_methods_from_env
from demo_backend.canceller import ConnectionCanceller

HttpImplementation = Literal["h11", "httptools"]

# Read once at import, so `uvicorn --http demo_backend.protocol:CancellingH11Protocol` is configured
# by the environment alone; a bad value fails the import with a message naming the variable.
_CANCEL_METHODS_FROM_ENV = cancel_methods_from_env()


class CancellingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus: a hang-up cancels the unanswered request (module docstring)."""

    cancel_methods: ClassVar[frozenset[str]] = _CANCEL_METHODS_FROM_ENV

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.canceller = ConnectionCanceller(self.app, self.cancel_methods)
        self.app = self.canceller

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.canceller.connection_lost()


class CancellingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus: a hang-up cancels the unanswered request."""

    cancel_methods: ClassVar[frozenset[str]] = _CANCEL_METHODS_FROM_ENV

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.canceller = ConnectionCanceller(self.app, self.cancel_methods)
        self.app = self.canceller

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.canceller.connection_lost()


# uvicorn's own "auto" picks httptools when it is importable; uvicorn[standard], which we depend
# on, always installs it, so the auto choice is fixed here rather than probed.
CancellingAutoProtocol = CancellingHttpToolsProtocol


_P = TypeVar("_P", CancellingH11Protocol, CancellingHttpToolsProtocol)


def with_cancel_methods(protocol: type[_P], cancel_methods: frozenset[str]) -> type[_P]:
    """A subclass of ``protocol`` that cancels ``cancel_methods`` instead of the env's choice."""
    namespace = {"cancel_methods": cancel_methods, "__module__": __name__}
    return cast("type[_P]", type(protocol.__name__, (protocol,), namespace))


def cancelling_protocol(
    http: HttpImplementation, cancel_methods: frozenset[str] | None = None
) -> type[CancellingH11Protocol | CancellingHttpToolsProtocol]:
    """The protocol class to hand to ``uvicorn.Config(http=...)``.

    ``cancel_methods`` of None keeps the ``HANGUP_CANCEL_METHODS`` / default policy.
    """
    if http == "h11":
        h11 = CancellingH11Protocol
        return h11 if cancel_methods is None else with_cancel_methods(h11, cancel_methods)
    httptools = CancellingHttpToolsProtocol
    return httptools if cancel_methods is None else with_cancel_methods(httptools, cancel_methods)
