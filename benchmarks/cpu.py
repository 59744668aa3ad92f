"""CPU per request: the CPU time a server's processes used over a timed wrk run, ÷ its requests.

Method: ``utime + stime`` of each of the server's processes (``/proc/PID/stat``, every thread of
the process included, in clock ticks of 10 ms) is read just before wrk starts and again just
after it exits; the difference, divided by the requests wrk counted in that run, is the CPU the
server spent on one request, in µs. It needs no assumption that the server kept its core busy
(``1 / req/s`` is that figure only for a server that was saturated): the same division by the
wall time of the window says how many cores it kept busy, shown next to it. For nginx the
processes are its workers (the master does nothing per request), for hangup and the bare aiohttp
proxy their one process.

What the window includes besides the requests: wrk's start and end, so the accepting and closing
of its 64 connections (a few hundred µs in all, against seconds of requests). What it cannot see:
kernel work on the server's behalf charged to another process, such as the loopback receive path
that runs in the sender's context; that is alike for every server measured. With ticks of 10 ms,
a 1 s quick run is good to about 1 %, a full run's 8 s to about 0.1 %.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU time ``pid`` has used so far, all its threads; OSError once gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: state is field 3 of proc(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


@dataclass(frozen=True)
class Reading:
    at: float
    """time.monotonic() when read."""
    cpu_seconds: float
    """CPU time of the processes read, added up."""


def read(pids: Iterable[int]) -> Reading:
    """The CPU time of ``pids`` together, now (a process that has exited counts nothing)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += process_cpu_seconds(pid)
    return Reading(time.monotonic(), total)


@dataclass(frozen=True)
class CpuUse:
    """One timed wrk run's CPU use by the server it loaded."""

    cpu_seconds: float
    wall_seconds: float
    requests: int

    @property
    def us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6 if self.requests else float("nan")

    @property
    def cores(self) -> float:
        """Cores the server kept busy over the window, on average (1.0: one saturated core)."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else float("nan")


def use_between(before: Reading, after: Reading, requests: int) -> CpuUse:
    return CpuUse(after.cpu_seconds - before.cpu_seconds, after.at - before.at, requests)
