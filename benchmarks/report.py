"""The numbers: medians over rounds, percentiles over probes, and the one markdown table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks import post
from benchmarks.memory import MemoryReading
from benchmarks.propagation import Hangup, ProbeSeries
from benchmarks.wrk import WrkResult

DIRECT, NGINX, HANGUP = "direct", "nginx", "hangup"
TARGETS = (DIRECT, NGINX, HANGUP)
"""Measured for throughput, hang-ups and memory: each a column of the table."""
BARE = "bare-aiohttp"
"""``benchmarks.bare_aiohttp_proxy``: the ceiling aiohttp's server puts on any proxy built on it.
Measured for throughput only, in a column of its own, each cell with its ratio to nginx."""
COLUMNS = (DIRECT, NGINX, BARE, HANGUP)
"""Left to right: the two references, the aiohttp ceiling, then hangup next to its ratio."""
HANGUP_WORKERS = "hangup-workers"
"""hangup ``--workers 2``: measured for throughput only, reported in rows of its own."""
WORKERS = 2
THROUGHPUT_TARGETS = (*TARGETS, BARE, HANGUP_WORKERS)
SIZES = {"1k": "1 KiB", "100k": "100 KiB"}
"""The GETs of static files, by path."""
POST = post.PATH
CASES = {
    **SIZES,
    POST: f"{post.ANSWER_SIZE / 1024:g} KiB POST ({post.BODY_SIZE / 1024:g} KiB body)",
}
"""Every throughput case, by path: the GETs, then the API call (``benchmarks.post``)."""
POST_TARGETS = (DIRECT, NGINX, HANGUP, HANGUP_WORKERS)
"""The targets that forward a request body: not the bare proxy, which answers 501 to one."""
TIMES = "\N{MULTIPLICATION SIGN}"

# Issue 6's targets, as ratios to nginx (one worker) or absolute bounds. Its throughput targets
# are for the GETs: the POST case came later and has none, so its rows say "—".
MIN_RPS_RATIO = {"1k": 0.5, "100k": 0.9}
MAX_P99_RATIO = 2.0
MAX_IDLE_PROPAGATION_P99_MS = 1.0
MAX_LOADED_PROPAGATION_P99_MS = 5.0
MAX_KIB_PER_IDLE_CONNECTION = 40.0
MIN_WORKERS_RATIO = 1.6
"""Issue 6: "with 2 workers on free cores, at least 1.6 times one" (req/s of one process)."""


def targets_of(case: str) -> tuple[str, ...]:
    """The throughput targets measured for ``case``."""
    return POST_TARGETS if case == POST else THROUGHPUT_TARGETS


@dataclass
class Results:
    """Everything one run measured, by target (``direct``, ``nginx``, ``hangup``, ...)."""

    labels: dict[str, str]
    throughput: dict[tuple[str, str], list[WrkResult]] = field(default_factory=dict)
    """(target, case) → one wrk result per round (a case is a key of ``CASES``)."""
    idle: dict[tuple[str, Hangup], ProbeSeries] = field(default_factory=dict)
    """(target, FIN or RST) → hang-ups while idle, pooled over rounds."""
    loaded: dict[tuple[str, Hangup], ProbeSeries] = field(default_factory=dict)
    """(target, FIN or RST) → hang-ups under load, pooled over rounds."""
    load: dict[str, list[WrkResult]] = field(default_factory=dict)
    """The wrk runs that loaded each proxy while its loaded probes ran."""
    memory: dict[str, MemoryReading] = field(default_factory=dict)


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation between ranks (numpy's default method)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _median_of(runs: Sequence[WrkResult], metric: Callable[[WrkResult], float]) -> float:
    return statistics.median(metric(run) for run in runs) if runs else math.nan


def _rps(run: WrkResult) -> float:
    return run.requests_per_second


def _p50(run: WrkResult) -> float:
    return run.p50_ms


def _p99(run: WrkResult) -> float:
    return run.p99_ms


def _ratio(hangup: float, nginx: float) -> float:
    return hangup / nginx if nginx and not math.isnan(nginx) else math.nan


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _num(value: float, digits: int = 2) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def _series(series: ProbeSeries | None) -> str:
    if series is None:
        return "—"
    if not series.samples_ms:
        return f"none of {series.missed} arrived"
    samples = series.samples_ms
    text = f"{statistics.median(samples):.3f} / {quantile(samples, 0.99):.3f} / {max(samples):.3f}"
    return text + (f" ({series.missed} missed)" if series.missed else "")


def _p99_of(series: ProbeSeries | None) -> float:
    if series is None or not series.samples_ms or series.missed:
        return math.nan
    return quantile(series.samples_ms, 0.99)


def render(results: Results, *, held_target: int) -> str:
    """The one markdown table: a row per metric, a column per target, then ratio and target."""
    header = [
        "metric",
        *(results.labels[target] for target in COLUMNS),
        "hangup ÷ nginx",
        "target",
        "met",
    ]
    rows: list[list[str]] = []
    for case, case_label in CASES.items():
        runs = {target: results.throughput.get((target, case), []) for target in COLUMNS}
        rps = {target: _median_of(runs[target], _rps) for target in COLUMNS}
        p50 = {target: _median_of(runs[target], _p50) for target in COLUMNS}
        p99 = {target: _median_of(runs[target], _p99) for target in COLUMNS}
        rps_ratio = _ratio(rps[HANGUP], rps[NGINX])
        p99_ratio = _ratio(p99[HANGUP], p99[NGINX])
        min_rps = MIN_RPS_RATIO.get(case)
        max_p99 = MAX_P99_RATIO if case in SIZES else None
        rows.append(
            [
                f"{case_label}: req/s (median, and range over rounds)",
                *(_rps_cell(runs[t], _to_nginx(t, rps)) for t in COLUMNS),
                f"{_num(rps_ratio)}{TIMES}",
                "—" if min_rps is None else f"≥ {min_rps}{TIMES} nginx",
                _met(None if min_rps is None or math.isnan(rps_ratio) else rps_ratio >= min_rps),
            ]
        )
        rows.append(
            [
                f"{case_label}: p50 latency (ms)",
                *(_num_cell(p50, t) for t in COLUMNS),
                f"{_num(_ratio(p50[HANGUP], p50[NGINX]))}{TIMES}",
                "",
                "",
            ]
        )
        rows.append(
            [
                f"{case_label}: p99 latency (ms)",
                *(_num_cell(p99, t) for t in COLUMNS),
                f"{_num(p99_ratio)}{TIMES}",
                "—" if max_p99 is None else f"≤ {max_p99:g}{TIMES} nginx",
                _met(None if max_p99 is None or math.isnan(p99_ratio) else p99_ratio <= max_p99),
            ]
        )
    # Idle rows, then loaded rows, so that the load's own row follows the rows it loaded.
    rows.extend(
        _propagation_row(results.idle, kind, "idle", MAX_IDLE_PROPAGATION_P99_MS) for kind in Hangup
    )
    rows.extend(
        _propagation_row(results.loaded, kind, "under wrk load", MAX_LOADED_PROPAGATION_P99_MS)
        for kind in Hangup
    )
    load_rps = {
        target: _median_of(results.load[target], _rps) if target in results.load else math.nan
        for target in COLUMNS
    }
    rows.append(
        [
            "… the load meanwhile (req/s, 1 KiB from the hold origin)",
            *(_num(load_rps[target], 0) for target in COLUMNS),
            f"{_num(_ratio(load_rps[HANGUP], load_rps[NGINX]))}{TIMES}",
            "",
            "",
        ]
    )
    rows.append(
        [
            "idle RSS (MiB)",
            *(_idle_rss(results.memory.get(target)) for target in COLUMNS),
            "",
            "",
            "",
        ]
    )
    memory = results.memory.get(HANGUP)
    per_connection = memory.per_connection_kib if memory is not None else math.nan
    held = memory.held if memory is not None else held_target
    rows.append(
        [
            f"RSS per idle keep-alive client connection, {held:,} held (KiB)",
            *(_per_connection(results.memory.get(target)) for target in COLUMNS),
            "",
            f"≤ {MAX_KIB_PER_IDLE_CONNECTION:g} KiB",
            _met(
                None
                if math.isnan(per_connection)
                else per_connection <= MAX_KIB_PER_IDLE_CONNECTION
            ),
        ]
    )
    rows.extend(_workers_rows(results))
    lines = [_row(header), _row(["---", *["---:"] * (len(header) - 3), "---", "---"])]
    lines.extend(_row(row) for row in rows)
    return "\n".join(lines)


_HANGUP_ENDS = {Hangup.FIN: "EOF", Hangup.RST: "end"}
"""How each kind's rows name the origin's side. The FIN rows keep their earlier name (a proxy's
close() reaches the origin as EOF); after a RST a proxy may as well abort its upstream socket, so
"end". For both kinds the hold origin times whichever sign, EOF or reset, comes first."""


def _propagation_row(
    series: dict[tuple[str, Hangup], ProbeSeries], kind: Hangup, when: str, max_p99_ms: float
) -> list[str]:
    """Hang-ups of one kind in one phase: every target's samples, and whether hangup's p99 is
    within the bound ("—" when any of hangup's probes never arrived: the run fails for that)."""
    p99 = _p99_of(series.get((HANGUP, kind)))
    return [
        f"hang-up by {kind.value} → upstream {_HANGUP_ENDS[kind]}, {when}: median / p99 / max (ms)",
        *(_series(series.get((target, kind))) for target in COLUMNS),
        "",
        f"p99 ≤ {max_p99_ms:g} ms",
        _met(None if math.isnan(p99) else p99 <= max_p99_ms),
    ]


def _workers_rows(results: Results) -> list[list[str]]:
    """hangup ``--workers 2`` in the hangup column, with its ratios to nginx and to one process."""
    label = results.labels.get(HANGUP_WORKERS, HANGUP_WORKERS)
    rows = []
    for case, case_label in CASES.items():
        # Issue 6's workers target is for the GETs, as its other throughput targets are.
        has_target = case in SIZES
        runs = results.throughput.get((HANGUP_WORKERS, case), [])
        rps = _median_of(runs, _rps)
        to_nginx = _ratio(rps, _median_of(results.throughput.get((NGINX, case), []), _rps))
        to_one = _ratio(rps, _median_of(results.throughput.get((HANGUP, case), []), _rps))
        rows.append(
            [
                f"{case_label}: req/s, {label} (median, and range over rounds)",
                *_in_hangup_column(_rps_cell(runs)),
                f"{_num(to_nginx)}{TIMES} nginx; {_num(to_one)}{TIMES} 1 process",
                f"≥ {MIN_WORKERS_RATIO:g}{TIMES} 1 process (free cores)" if has_target else "—",
                _met(None if not has_target or math.isnan(to_one) else to_one >= MIN_WORKERS_RATIO),
            ]
        )
        p99 = _median_of(runs, _p99)
        p99_nginx = _median_of(results.throughput.get((NGINX, case), []), _p99)
        rows.append(
            [
                f"{case_label}: p99 latency (ms), {label}",
                *_in_hangup_column(_num(p99)),
                f"{_num(_ratio(p99, p99_nginx))}{TIMES} nginx",
                "",
                "",
            ]
        )
    return rows


def _in_hangup_column(cell: str) -> list[str]:
    return [cell if target == HANGUP else "—" for target in COLUMNS]


def _to_nginx(target: str, values: dict[str, float]) -> str | None:
    """The ceiling's ratio to nginx, shown in its own cells (the ratio column is hangup's)."""
    if target != BARE or math.isnan(values[BARE]):
        return None
    return f"{_num(_ratio(values[BARE], values[NGINX]))}{TIMES} nginx"


def _num_cell(values: dict[str, float], target: str) -> str:
    ratio = _to_nginx(target, values)
    text = _num(values[target])
    return text if ratio is None else f"{text} ({ratio})"


def _rps_cell(runs: Sequence[WrkResult], ratio: str | None = None) -> str:
    if not runs:
        return "—"
    values = [run.requests_per_second for run in runs]
    notes = [] if len(values) == 1 else [f"{min(values):,.0f} to {max(values):,.0f}"]
    notes += [] if ratio is None else [ratio]
    text = f"{statistics.median(values):,.0f}"
    return f"{text} ({'; '.join(notes)})" if notes else text


def _idle_rss(reading: MemoryReading | None) -> str:
    if reading is None:
        return "—"
    text = f"{reading.idle_kib / 1024:.1f}"
    if reading.other_kib:
        text += f" (+ master {reading.other_kib / 1024:.1f})"
    return text


def _per_connection(reading: MemoryReading | None) -> str:
    return "—" if reading is None else f"{reading.per_connection_kib:.1f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
