"""The log pipeline's stdout: canonical lines written in batches, every other event at once.

Flushing stdout after every canonical line cost one ``write(2)`` per request. Here those lines
wait in a list and go out together on the event loop's next turn after the first of them
(``LogStream.write_soon``): on an idle proxy that turn comes at once; under load, one write
carries every line that ended in the same turn. (Waiting 10 ms after the
first line instead, to gather more, measured no cheaper under wrk.) Everything else (start-up,
rejections, aiohttp's and uvicorn's records) is written and flushed at once, as before, and
first pushes out any waiting lines, so stdout keeps the order in which events happened. Lines
that have waited are also written when the interpreter exits (``atexit``) or before a hard
``os._exit`` (which follows a warning event, written at once and so pushing them out).

Batches are cut at ``PIPE_BUF`` bytes of whole lines: POSIX makes a pipe write of at most that
size atomic, so processes sharing one stdout pipe (``--workers``) never interleave inside a line,
as the per-line writes before never did.
"""

from __future__ import annotations

import asyncio
import select
from typing import TextIO

# A write to a pipe of at most this many bytes is never interleaved with another process's.
ATOMIC_WRITE_BYTES = select.PIPE_BUF


class LogStream:
    """Wraps the process's stdout for structlog's ``WriteLogger`` and the stdlib handler."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._waiting: list[str] = []
        # The loop a drain is scheduled on, if any: a loop that closed before running it
        # (a test's, or asyncio.run ending) must not stop the next loop from scheduling its own.
        self._drain_scheduled_on: asyncio.AbstractEventLoop | None = None

    # --- the file interface: WriteLogger and StreamHandler write, then flush, every event ------

    def write(self, text: str) -> int:
        if self._waiting:
            self.drain()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    # --- the canonical line's path ------------------------------------------------------------

    def write_soon(self, line: str) -> None:
        """Queue ``line`` (ending in a newline) to be written on the event loop's next turn.

        Outside a running loop there is no next turn to wait for: the line is written at once.
        """
        self._waiting.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.drain()
            return
        if self._drain_scheduled_on is not loop:
            self._drain_scheduled_on = loop
            loop.call_soon(self.drain)

    def drain(self) -> None:
        """Write every waiting line, in pipe-atomic batches of whole lines, and flush."""
        self._drain_scheduled_on = None
        waiting, self._waiting = self._waiting, []
        batch: list[str] = []
        size = 0
        for line in waiting:
            # Characters are bytes here: the queued lines are JSON, escaped to ASCII.
            if batch and size + len(line) > ATOMIC_WRITE_BYTES:
                self._write_batch(batch)
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._write_batch(batch)

    def _write_batch(self, lines: list[str]) -> None:
        # One flush per batch: a buffered stdout then makes exactly one write(2) of it.
        self.stream.write("".join(lines))
        self.stream.flush()
