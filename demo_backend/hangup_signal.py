"""A hang-up that code running in a thread can see.

Cancelling a request's task stops ``async`` code at its next ``await``. A ``def`` endpoint is
different: Starlette runs it with ``anyio.to_thread.run_sync``, whose wait is shielded, so the
task's cancellation is held until the thread returns, and ``anyio.from_thread.check_cancelled()``
inside the thread never sees it (observed, cancellation-facts §7). Nothing can stop a Python
thread from outside, so the thread has to look.

What it looks at: each request's ``HangupSignal`` is bound to a context variable that the
request's task holds (``canceller.unclaimed_signal`` says where it is bound and why), and the
canceller sets its flag in the same step as it starts cancelling the task. anyio runs the worker
thread in a copy of the caller's context (``anyio.to_thread.run_sync``, like ``asyncio.to_thread``):
the copy holds the same object, not a snapshot of its flag, so the endpoint's thread, and any
thread it starts with a copied context, sees a hang-up that happens after it started.
``client_hung_up()`` is a lock-free read of one attribute (what ``threading.Event.is_set`` is too),
cheap enough to call every few milliseconds. The flag is set only for a request the policy
cancels; a write carried to the end never sees it. A thread that outlives its request's app reads
the signal of a later request on the same keep-alive connection (``canceller`` module docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

_signal: ContextVar[HangupSignal | None] = ContextVar("hangup_signal", default=None)


class HangupSignal:
    """One request's hang-up as its threads read it: ``hung_up`` goes from False to True once."""

    __slots__ = ("hung_up",)

    def __init__(self) -> None:
        # A plain attribute: under the GIL one store is seen whole by every later read, in any
        # thread, which is all ``threading.Event`` gives a reader that only polls.
        self.hung_up = False


class ClientHungUp(Exception):  # noqa: N818 - it names an event, like KeyboardInterrupt
    """Raised by ``raise_if_hung_up`` in code that wants to unwind at once."""


def client_hung_up() -> bool:
    """True once this request's client hung up and the policy cancels it. False outside one."""
    signal = _signal.get()
    return signal is not None and signal.hung_up


def raise_if_hung_up() -> None:
    if client_hung_up():
        raise ClientHungUp


# The canceller's two calls are the context variable's own methods: a function of ours around each
# would cost every request a Python frame.
bind: Callable[[HangupSignal], object] = _signal.set
"""Make a signal this context's hang-up signal (``canceller.unclaimed_signal`` says where)."""
bound: Callable[[], HangupSignal | None] = _signal.get
"""This context's signal, None outside a request."""
