"""``python -m benchmarks.logline``: what one canonical request line costs, before and after.

Times ``Exchange.write_log_line`` on a finished exchange, output to /dev/null, in one process:
through structlog's processor chain with a flush per line (``proxy.logs.logline`` switched off,
which is how every line was written before), and through ``proxy.logs.logline`` inside a running
event loop that ends ``--batch`` requests per turn (stdout is then written once per turn). Prints
microseconds per line, best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import time
import timeit
from collections.abc import Callable

import structlog

from proxy.exchange.state import Exchange
from proxy.logs import logline
from proxy.logs.configure import configure_logging

REQUEST_ID = "0123456789abcdef0123456789abcdef"


def finished_exchange() -> Exchange:
    exchange = Exchange(REQUEST_ID, "GET", "/1k", "127.0.0.1", cancellable=True)
    exchange.upstream_status = 200
    exchange.completed(200)
    return exchange


def best_microseconds(run: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(run, number=number, repeat=repeat)) / number * 1e6


def in_loop_turns(write: Callable[[], None], batch: int, number: int, repeat: int) -> float:
    """Microseconds per line with ``batch`` lines written per event-loop turn.

    The cost of the turns themselves (the same loop, writing nothing) is subtracted.
    """

    def nothing() -> None:
        return None

    async def turns(each: Callable[[], None]) -> float:
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(number // batch):
                for _ in range(batch):
                    each()
                await asyncio.sleep(0)  # one turn: the scheduled drain runs
            best = min(best, time.perf_counter() - started)
        return best

    lines = number // batch * batch
    return (asyncio.run(turns(write)) - asyncio.run(turns(nothing))) / lines * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.logline", description=__doc__)
    parser.add_argument("--number", type=int, default=64_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16, help="lines per event-loop turn")
    args = parser.parse_args(argv)
    with open(os.devnull, "w") as devnull:
        configure_logging("json", "info", stream=devnull)
        structlog.contextvars.bind_contextvars(request_id=REQUEST_ID)
        exchange = finished_exchange()
        timestamps = logline.UtcTimestamps()
        figures = {
            "timestamp, datetime.now().isoformat() (structlog's TimeStamper)": best_microseconds(
                lambda: datetime.datetime.now(tz=datetime.UTC).isoformat(), args.number, args.repeat
            ),
            "timestamp, UtcTimestamps.now()": best_microseconds(
                timestamps.now, args.number, args.repeat
            ),
            "line, proxy.logs.logline outside a loop (a write and a flush per line)": (
                best_microseconds(exchange.write_log_line, args.number, args.repeat)
            ),
            f"line, proxy.logs.logline in a loop, {args.batch} lines per turn": in_loop_turns(
                exchange.write_log_line, args.batch, args.number, args.repeat
            ),
            "line, proxy.logs.logline in a loop, 1 line per turn": in_loop_turns(
                exchange.write_log_line, 1, args.number // 4, args.repeat
            ),
        }
        installed = logline.current()
        logline.install(None)
        figures["line, structlog's processor chain (as before), a flush per line"] = (
            best_microseconds(exchange.write_log_line, args.number, args.repeat)
        )
        logline.install(installed)
    for name, microseconds in figures.items():
        print(f"{microseconds:7.2f} µs  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
