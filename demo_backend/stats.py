"""Counters of what the demo backend's handlers did, one set per app instance.

The top-level counters belong to the original routes; ``work`` holds, per ``/work/<name>`` recipe
(``demo_backend.work``), how many runs started, completed and were cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, get_args

Counter = Literal[
    "started",
    "completed",
    "cancelled",
    "background_started",
    "background_completed",
    "background_cancelled",
    "stream_started",
    "stream_completed",
    "stream_cancelled",
    "ws_opened",
    "ws_closed",
    "ws_cancelled",
]
COUNTERS: tuple[Counter, ...] = get_args(Counter)

WorkOutcome = Literal["started", "completed", "cancelled"]
WORK_OUTCOMES: tuple[WorkOutcome, ...] = get_args(WorkOutcome)
WORK_NAMES = ("sqlite", "postgres", "relay", "thread")


class Stats:
    """Handler counters; ``wait_until`` lets an in-process observer (a test) wait, not poll."""

    def __init__(self) -> None:
        self._counts: dict[Counter, int] = dict.fromkeys(COUNTERS, 0)
        self._work: dict[str, dict[WorkOutcome, int]] = {
            name: dict.fromkeys(WORK_OUTCOMES, 0) for name in WORK_NAMES
        }
        # Set and replaced on every change: each waiter wakes once per change and re-checks.
        self._changed = asyncio.Event()

    def increment(self, counter: Counter) -> None:
        self._counts[counter] += 1
        self._wake()

    def count_work(self, name: str, outcome: WorkOutcome) -> None:
        """One more ``outcome`` for the ``/work/<name>`` recipe; call it on the event loop."""
        self._work[name][outcome] += 1
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def snapshot(self) -> dict[Counter, int]:
        return dict(self._counts)

    def work_snapshot(self) -> dict[str, dict[WorkOutcome, int]]:
        return {name: dict(counts) for name, counts in self._work.items()}

    def work(self, name: str) -> dict[WorkOutcome, int]:
        return dict(self._work[name])

    def __getitem__(self, counter: Counter) -> int:
        return self._counts[counter]

    async def wait_until(self, predicate: Callable[[dict[Counter, int]], bool]) -> None:
        """Return once ``predicate(snapshot)`` holds; the caller bounds the wait."""
        while not predicate(self.snapshot()):
            await self._changed.wait()
