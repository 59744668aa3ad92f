"""A CPU-bound SQLite query off the event loop, interrupted when the request is cancelled.

The query runs in a worker thread (sqlite3 releases the GIL while a statement steps, so the loop
stays free). Cancelling the awaiting task does not stop that thread (cancellation-facts §7): on
``CancelledError`` the handler calls ``Connection.interrupt()``, which makes the running
statement fail with ``OperationalError: interrupted`` at its next step, and sets a stop flag. An
interrupt that comes while no statement is running is a no-op (SQLite's ``sqlite3_interrupt``
docs), so a statement that starts just after it would run whole: the flag is also read by a
progress handler every ``PROGRESS_STEPS`` virtual-machine steps (well under a millisecond), which
aborts the statement the same way, and between statements. The handler then waits for the thread
to return before it lets the cancellation go on: when the handler is gone, so is its work.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time

import anyio

# One statement: count a recursive sequence, ~0.1 s of CPU on the 2-core CI machines. The loop
# below repeats it until the requested time is up, so ``seconds`` sizes the work.
STATEMENT = (
    "WITH RECURSIVE counter(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM counter WHERE n < 400000)"
    " SELECT count(*) FROM counter"
)


PROGRESS_STEPS = 100_000


class QueryInterrupted(Exception):  # noqa: N818 - names what happened to the query
    """The thread stopped early because it was told to."""


def _run_for(connection: sqlite3.Connection, seconds: float, stop: threading.Event) -> int:
    """Repeat ``STATEMENT`` for ``seconds``; the rows it counted. Runs in a worker thread."""
    deadline = time.monotonic() + seconds
    rows = 0
    while time.monotonic() < deadline:
        if stop.is_set():
            raise QueryInterrupted
        try:
            (counted,) = connection.execute(STATEMENT).fetchone()
        except sqlite3.OperationalError as exc:
            if stop.is_set():
                raise QueryInterrupted from exc
            raise
        rows += counted
    return rows


async def interruptible_query(seconds: float) -> int:
    """Rows counted by a query sized to run ``seconds``; on cancellation, interrupted and joined."""
    # check_same_thread=False: the connection is made here and used by the worker thread; only
    # interrupt() is called from the loop, which SQLite allows from any thread.
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    stop = threading.Event()
    # A non-zero return aborts the running statement (sqlite3_progress_handler).
    connection.set_progress_handler(stop.is_set, PROGRESS_STEPS)
    worker = asyncio.get_running_loop().run_in_executor(None, _run_for, connection, seconds, stop)
    try:
        # Shielded: a cancellation must reach the except clause below, not the thread's future.
        return await asyncio.shield(worker)
    except asyncio.CancelledError:
        stop.set()
        connection.interrupt()
        # The protocol cancels through an anyio cancel scope, which re-delivers its cancellation
        # at every await until the handler leaves it (trio's semantics): the join is shielded, or
        # it would be cut short at once and the handler would end before its thread.
        with anyio.CancelScope(shield=True), contextlib.suppress(QueryInterrupted):
            await worker
        raise
    finally:
        # A second cancellation can cut the wait above short: close once the thread is done.
        if worker.done():
            connection.close()
        else:
            worker.add_done_callback(lambda _: connection.close())
