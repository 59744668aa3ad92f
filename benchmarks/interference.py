"""How much CPU other processes on the machine took while a measurement ran.

The benchmark's numbers are only as good as the quiet of the two cores: another session's test
suite on the same machine can halve nginx's rate. Each measured wrk run is bracketed by two
readings; what the whole machine was busy with, minus what the benchmark's own processes used
(the driver, its children, nginx's workers), is charged to "others", in cores.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cpu import process_cpu_seconds

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
DISTURBED_CORES = 0.1
"""Above this share of a core taken by others, a run is reported as disturbed."""


@dataclass(frozen=True)
class Reading:
    at: float
    machine_busy: float
    """Seconds of CPU the whole machine spent busy (user, system, interrupts, steal)."""
    ours: float
    """Seconds of CPU the benchmark's own processes used."""


def read(pids: Iterable[int]) -> Reading:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    # user nice system idle iowait irq softirq steal (guest time is already inside user).
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / _TICKS_PER_SECOND
    own = resource.getrusage(resource.RUSAGE_SELF)
    # Children already waited for (each finished wrk run) count here, once reaped.
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            ours += process_cpu_seconds(pid)
    return Reading(time.monotonic(), busy, ours)


def others_cores(before: Reading, after: Reading) -> float:
    """Cores other processes kept busy between two readings, on average (never negative)."""
    elapsed = after.at - before.at
    if elapsed <= 0:
        return 0.0
    others = (after.machine_busy - before.machine_busy) - (after.ours - before.ours)
    return max(0.0, others / elapsed)
