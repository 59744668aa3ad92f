"""How measurements become the table's cells: medians over rounds, ratios, numbers, and rows."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

from benchmarks.cpu import CpuUse
from benchmarks.memory import MemoryReading
from benchmarks.propagation import ProbeSeries
from benchmarks.wrk import WrkResult

TIMES = "\N{MULTIPLICATION SIGN}"


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation between ranks (numpy's default method)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_of(runs: Sequence[WrkResult], metric: Callable[[WrkResult], float]) -> float:
    return statistics.median(metric(run) for run in runs) if runs else math.nan


def rps(run: WrkResult) -> float:
    return run.requests_per_second


def p50(run: WrkResult) -> float:
    return run.p50_ms


def p99(run: WrkResult) -> float:
    return run.p99_ms


def ratio(value: float, reference: float) -> float:
    """``value ÷ reference``; NaN when the reference is missing or zero."""
    return value / reference if reference and not math.isnan(reference) else math.nan


def median_cpu(uses: Sequence[CpuUse]) -> float:
    return statistics.median(use.us_per_request for use in uses) if uses else math.nan


def met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def num(value: float, digits: int = 2) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def series_cell(series: ProbeSeries | None) -> str:
    if series is None:
        return "—"
    if not series.samples_ms:
        return f"none of {series.missed} arrived"
    samples = series.samples_ms
    text = f"{statistics.median(samples):.3f} / {quantile(samples, 0.99):.3f} / {max(samples):.3f}"
    return text + (f" ({series.missed} missed)" if series.missed else "")


def p99_of(series: ProbeSeries | None) -> float:
    if series is None or not series.samples_ms or series.missed:
        return math.nan
    return quantile(series.samples_ms, 0.99)


def rps_cell(runs: Sequence[WrkResult], note: str | None = None) -> str:
    """The median req/s over rounds, then the range (with more than one round) and ``note``."""
    if not runs:
        return "—"
    values = [run.requests_per_second for run in runs]
    notes = [] if len(values) == 1 else [f"{min(values):,.0f} to {max(values):,.0f}"]
    notes += [] if note is None else [note]
    text = f"{statistics.median(values):,.0f}"
    return f"{text} ({'; '.join(notes)})" if notes else text


def cpu_cell(uses: Sequence[CpuUse]) -> str:
    """The median µs of CPU per request over rounds, and the cores kept busy meanwhile."""
    if not uses:
        return "—"
    cores = statistics.median(use.cores for use in uses)
    return f"{num(median_cpu(uses), 1)} ({cores:.2f} cores)"


def idle_rss_cell(reading: MemoryReading | None) -> str:
    if reading is None:
        return "—"
    text = f"{reading.idle_kib / 1024:.1f}"
    if reading.other_kib:
        text += f" (+ master {reading.other_kib / 1024:.1f})"
    return text


def per_connection_cell(reading: MemoryReading | None) -> str:
    return "—" if reading is None else f"{reading.per_connection_kib:.1f}"


def markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
