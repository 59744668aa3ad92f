"""Counters of what the demo backend's handlers did, one set per app instance."""

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


class Stats:
    """Handler counters; ``wait_until`` lets an in-process observer (a test) wait, not poll."""

    def __init__(self) -> None:
        self._counts: dict[Counter, int] = dict.fromkeys(COUNTERS, 0)
        # Set and replaced on every change: each waiter wakes once per change and re-checks.
        self._changed = asyncio.Event()

    def increment(self, counter: Counter) -> None:
        self._counts[counter] += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def snapshot(self) -> dict[Counter, int]:
        return dict(self._counts)

    def __getitem__(self, counter: Counter) -> int:
        return self._counts[counter]

    async def wait_until(self, predicate: Callable[[dict[Counter, int]], bool]) -> None:
        """Return once ``predicate(snapshot)`` holds; the caller bounds the wait."""
        while not predicate(self.snapshot()):
            await self._changed.wait()
