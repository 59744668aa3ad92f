"""Hang-up → work stopped, per ``/work`` recipe: ``python -m benchmarks.work_stop [--hangups N]``.

The real console scripts, as in the tests: ``hangup-proxy`` in front of ``hangup-demo-backend``
(and, for the relay, a second backend behind its own proxy as the downstream; for PostgreSQL, a
real server from ``tests.postgres_server``). Each probe opens a fresh connection, sends
``GET /work/<name>?seconds=30``, waits until the work has run for ``RUN_BEFORE`` seconds, notes
the time and hangs up (FIN and RST alternate), then times the moment the work is seen to stop,
from outside the backend wherever it can be:

* ``sqlite`` and ``thread``: the backend's CPU goes flat. Every thread's CPU time is read from
  ``/proc/PID/task/*/schedstat`` (nanoseconds) every ``SAMPLE`` seconds; the work stopped at the
  end of the last sample in which the process used more than half a core, once ``FLAT_WINDOW``
  has passed without another.
* ``postgres``: the query is gone from ``pg_stat_activity`` (polled every ``SAMPLE`` seconds on a
  connection of the benchmark's own).
* ``relay``: the downstream backend logs ``handler_cancelled`` for the request (its log line's
  timestamp; both processes share this machine's clock).

Prints one markdown table: median and p99 over the probes, per recipe, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from tests.postgres_server import find_installation, running_postgres
from tests.support import RawConnection, Stack, request_bytes, running_stack

RUN_BEFORE = 0.3
SAMPLE = 0.001
FLAT_WINDOW = 0.05
BUSY_SHARE = 0.5
STOP_WAIT = 5.0
RECIPES = ("sqlite", "thread", "postgres", "relay")

_ids = itertools.count(1)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in nanoseconds (schedstat's first field, proc(5))."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


async def cpu_flat_after(pid: int, hung_up: float) -> float:
    """Seconds from ``hung_up`` to the end of the last sample in which ``pid`` was still busy
    (used more than ``BUSY_SHARE`` of a core), once it has stayed below that for ``FLAT_WINDOW``."""
    last_busy = hung_up
    before_at, before_cpu = time.perf_counter(), cpu_ns(pid)
    async with asyncio.timeout(STOP_WAIT):
        while before_at - last_busy < FLAT_WINDOW:
            await asyncio.sleep(SAMPLE)
            now, cpu = time.perf_counter(), cpu_ns(pid)
            if cpu - before_cpu > BUSY_SHARE * (now - before_at) * 1e9:
                last_busy = now
            before_at, before_cpu = now, cpu
    return last_busy - hung_up


async def query_gone_after(dsn: str, hung_up: float) -> float:
    connection = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(STOP_WAIT):
            # Another process's state: polling is the only way to watch it.
            while await connection.fetchval(  # noqa: ASYNC110
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
                " AND state = 'active'"
            ):
                await asyncio.sleep(SAMPLE)
        return time.perf_counter() - hung_up
    finally:
        await connection.close()


async def logged_after(stack: Stack, event: str, request_id: str, hung_up_at: datetime) -> float:
    line = await stack.backend.wait_for_event(event, request_id=request_id)
    return (datetime.fromisoformat(line["timestamp"]) - hung_up_at).total_seconds()


Stopped = Callable[[str, float, datetime], Awaitable[float]]


async def probe(stack: Stack, name: str, stopped: Stopped, kind: str) -> float:
    request_id = f"bench-{name}-{next(_ids)}"
    client = await RawConnection.open(stack.port)
    await client.send(
        request_bytes("GET", f"/work/{name}?seconds=30", [("X-Request-ID", request_id)])
    )
    await stack.backend.wait_for_event("work_started", request_id=request_id)
    # Not a wait for an event: the work runs for a while before its client leaves.
    await asyncio.sleep(RUN_BEFORE)
    hung_up, hung_up_at = time.perf_counter(), datetime.now(UTC)
    client.hang_up("fin" if kind == "fin" else "rst")
    took = await stopped(request_id, hung_up, hung_up_at)
    await stack.backend.wait_for_event("handler_cancelled", request_id=request_id)
    return took


@contextlib.asynccontextmanager
async def recipe_stack(name: str, dsn: str) -> AsyncIterator[tuple[Stack, Stopped]]:
    if name == "relay":
        async with running_stack() as downstream:
            url = f"http://127.0.0.1:{downstream.port}"
            async with running_stack(("--port", "0", "--downstream", url)) as front:

                async def cancelled_downstream(rid: str, _: float, at: datetime) -> float:
                    return await logged_after(downstream, "handler_cancelled", rid, at)

                yield front, cancelled_downstream
        return
    args = ("--port", "0", "--postgres-dsn", dsn) if name == "postgres" else ("--port", "0")
    async with running_stack(args) as stack:
        pid = stack.backend.process.pid

        async def stopped(rid: str, hung_up: float, _: datetime) -> float:
            if name == "postgres":
                return await query_gone_after(dsn, hung_up)
            return await cpu_flat_after(pid, hung_up)

        yield stack, stopped


async def measure(hangups: int, dsn: str) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    for name in RECIPES:
        async with recipe_stack(name, dsn) as (stack, stopped):
            results[name] = [
                await probe(stack, name, stopped, "fin" if number % 2 else "rst")
                for number in range(hangups)
            ]
    return results


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def table(results: dict[str, list[float]]) -> str:
    what = {
        "sqlite": "backend CPU flat",
        "thread": "backend CPU flat",
        "postgres": "query gone from pg_stat_activity",
        "relay": "downstream handler cancelled",
    }
    rows = [
        "| recipe | stopped means | hang-ups | median ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, samples in results.items():
        median = statistics.median(samples) * 1000
        rows.append(
            f"| `/work/{name}` | {what[name]} | {len(samples)} | {median:.1f} "
            f"| {p99(samples) * 1000:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.work_stop", description=__doc__)
    parser.add_argument("--hangups", type=int, default=30, help="probes per recipe (default 30)")
    args = parser.parse_args(argv)
    if args.hangups < 1:
        parser.error("--hangups must be at least 1")
    with running_postgres(find_installation()) as dsn:
        results = asyncio.run(measure(args.hangups, dsn))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
