"""CPU work in a ``def`` endpoint that stops within one step of its client's hang-up.

Starlette runs a ``def`` endpoint in its thread pool and waits for it shielded: cancelling the
request task changes nothing until the thread returns, and ``anyio.from_thread.check_cancelled()``
does not see that cancel (cancellation-facts §7). The endpoint therefore checks
``demo_backend.hangup_signal.client_hung_up()`` between steps of its work, a flag the canceller
sets with the cancel and that reaches this thread through the request's context. A step is
``STEP_SECONDS`` of hashing, so the work stops within about that long after the hang-up; the
check costs a context-variable lookup and an ``Event.is_set()``.
"""

from __future__ import annotations

import hashlib
import time

from demo_backend.hangup_signal import client_hung_up

STEP_SECONDS = 0.005


def hash_for(seconds: float) -> int | None:
    """Hash for ``seconds`` of CPU; the rounds done, or None when the client hung up first."""
    deadline = time.monotonic() + seconds
    digest = b"hangup"
    rounds = 0
    while (now := time.monotonic()) < deadline:
        if client_hung_up():
            return None
        step_end = min(deadline, now + STEP_SECONDS)
        while time.monotonic() < step_end:
            for _ in range(200):
                digest = hashlib.sha256(digest).digest()
            rounds += 200
    return rounds
