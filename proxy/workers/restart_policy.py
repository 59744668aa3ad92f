"""When the supervisor restarts a worker that exited, and when it gives up.

A worker that exits while the supervisor is not draining is restarted after a short delay. The
delay doubles with each start in a row that failed (a worker that exited before its listener was
up), so a worker that crashes at start-up costs a few restarts a second at most, never a hot
loop; a worker that was listening resets the count. Two cases end the supervisor instead, with an
error, because restarting could not help and an operator must look:

- a worker of the first generation fails to start (nginx and gunicorn refuse to start then too:
  the same start-up would fail again);
- a slot has failed to start ``MAX_FAILED_STARTS`` times in a row.
"""

from __future__ import annotations

FIRST_RESTART_DELAY = 0.1
"""Seconds before restarting a worker that was listening when it exited."""

MAX_RESTART_DELAY = 5.0

MAX_FAILED_STARTS = 3
"""Starts in a row of one slot that may fail before the supervisor gives up."""


def restart_delay(failed_starts: int) -> float:
    """Seconds before the next start of a slot whose last ``failed_starts`` starts failed."""
    return min(FIRST_RESTART_DELAY * 2.0**failed_starts, MAX_RESTART_DELAY)


def should_give_up(failed_starts: int, *, all_started_once: bool) -> bool:
    """True when a slot's failed starts mean no restart can help (see the module docstring)."""
    if failed_starts == 0:
        return False
    return not all_started_once or failed_starts >= MAX_FAILED_STARTS
