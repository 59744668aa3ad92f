"""A hang-up that code running in a thread can see.

Cancelling a request's task stops ``async`` code at its next ``await``. A ``def`` endpoint is
different: Starlette runs it with ``anyio.to_thread.run_sync``, whose wait is shielded, so the
task's cancellation is held until the thread returns, and ``anyio.from_thread.check_cancelled()``
inside the thread never sees it (observed, cancellation-facts §7). Nothing can stop a Python
thread from outside, so the thread has to look.

What it looks at: ``ConnectionCanceller`` gives every request a ``threading.Event`` and binds it
to a context variable inside the request's task; the canceller sets it in the same step as it
cancels the task. anyio runs the worker thread in a copy of the caller's context
(``anyio.to_thread.run_sync``, like ``asyncio.to_thread``), so the endpoint's thread, and any
thread it starts with a copied context, reads the same event: ``client_hung_up()`` is a
lock-free flag read, cheap enough to call every few milliseconds. The event is set only for a
request the policy cancels; a write carried to the end never sees it.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token

_hung_up: ContextVar[threading.Event | None] = ContextVar("hangup_hung_up", default=None)


class ClientHungUp(Exception):  # noqa: N818 - it names an event, like KeyboardInterrupt
    """Raised by ``raise_if_hung_up`` in code that wants to unwind at once."""


def client_hung_up() -> bool:
    """True once this request's client hung up and the policy cancels it. False outside one."""
    event = _hung_up.get()
    return event is not None and event.is_set()


def raise_if_hung_up() -> None:
    if client_hung_up():
        raise ClientHungUp


def bind(event: threading.Event) -> Token[threading.Event | None]:
    """Make ``event`` this context's hang-up signal (the canceller does, once per request)."""
    return _hung_up.set(event)


def unbind(token: Token[threading.Event | None]) -> None:
    _hung_up.reset(token)
