"""The one markdown table, and the line next to Istio's figure, from one run's ``Results``
(each cell made by ``benchmarks.cells``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from benchmarks import backends, cells, post
from benchmarks.cpu import CpuUse
from benchmarks.memory import MemoryReading
from benchmarks.propagation import Hangup, ProbeSeries
from benchmarks.wrk import WrkResult

DIRECT, NGINX, HANGUP = "direct", "nginx", "hangup"
TARGETS = (DIRECT, NGINX, HANGUP)
"""Measured for throughput, hang-ups and memory: each a column of the table."""
BARE = "bare-aiohttp"
"""``benchmarks.bare_aiohttp_proxy``: the ceiling aiohttp's server puts on any proxy built on it.
Measured for throughput and CPU only, in a column of its own, each cell with its ratio to nginx."""
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
"""Every throughput case, by path: the GETs, then the API call (``benchmarks.post``). Every
target in ``THROUGHPUT_TARGETS`` is measured for every case."""
CPU_TARGETS = (NGINX, BARE, HANGUP)
"""The proxies whose CPU time per request is measured (``benchmarks.cpu``)."""
TIMES = cells.TIMES

# Issue 6's targets, as ratios to nginx (one worker) or absolute bounds. Its throughput targets
# are for the GETs: the POST case came later and has none, so its rows say "—".
MIN_RPS_RATIO = {"1k": 0.5, "100k": 0.9}
MAX_P99_RATIO = 2.0
MAX_IDLE_PROPAGATION_P99_MS = 1.0
MAX_LOADED_PROPAGATION_P99_MS = 5.0
MAX_KIB_PER_IDLE_CONNECTION = 40.0
MIN_WORKERS_RATIO = 1.6
"""Issue 6: "with 2 workers on free cores, at least 1.6 times one" (req/s of one process)."""

# Issue 16's targets, for every case: hangup next to the bare aiohttp proxy, the least work a
# proxy on aiohttp's server can do; and the cancelling protocol next to plain uvicorn.
MIN_RPS_TO_BARE = 0.8
MAX_P99_TO_BARE = 1.3
MIN_BACKEND_RATIO = 0.97

ISTIO_ENVOY_US = 350.0
"""Istio's published CPU cost of its Envoy sidecar, 0.35 vCPU per 1,000 requests/s through the
proxy (istio.io, "Performance and Scalability", Istio 1.12 to 1.15; with mutual TLS and
telemetry on)."""


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
    cpu: dict[tuple[str, str], list[CpuUse]] = field(default_factory=dict)
    """(target in ``CPU_TARGETS``, case) → its CPU use over each round's timed wrk run."""
    backends: dict[str, list[WrkResult]] = field(default_factory=dict)
    """A key of ``backends.BACKENDS`` → one wrk result per round."""


def render(results: Results, *, held_target: int) -> str:
    """The one markdown table: a row per metric, a column per target, then two triples of ratio,
    target and met: issue 6's (hangup ÷ nginx) and issue 16's (hangup ÷ the bare aiohttp proxy,
    and the cancelling protocol ÷ plain uvicorn)."""
    header = [
        "metric",
        *(results.labels[target] for target in COLUMNS),
        "hangup ÷ nginx",
        "target (issue 6)",
        "met",
        "ratio (issue 16)",
        "target (issue 16)",
        "met",
    ]
    rows: list[list[str]] = []
    for case, case_label in CASES.items():
        runs = {target: results.throughput.get((target, case), []) for target in COLUMNS}
        rps = {target: cells.median_of(runs[target], cells.rps) for target in COLUMNS}
        p50 = {target: cells.median_of(runs[target], cells.p50) for target in COLUMNS}
        p99 = {target: cells.median_of(runs[target], cells.p99) for target in COLUMNS}
        rps_ratio = cells.ratio(rps[HANGUP], rps[NGINX])
        p99_ratio = cells.ratio(p99[HANGUP], p99[NGINX])
        min_rps = MIN_RPS_RATIO.get(case)
        max_p99 = MAX_P99_RATIO if case in SIZES else None
        rows.append(
            [
                f"{case_label}: req/s (median, and range over rounds)",
                *(cells.rps_cell(runs[t], _to_nginx(t, rps)) for t in COLUMNS),
                f"{cells.num(rps_ratio)}{TIMES}",
                "—" if min_rps is None else f"≥ {min_rps}{TIMES} nginx",
                cells.met(
                    None if min_rps is None or math.isnan(rps_ratio) else rps_ratio >= min_rps
                ),
                *_to_bare(rps, MIN_RPS_TO_BARE, is_floor=True),
            ]
        )
        rows.append(
            [
                f"{case_label}: p50 latency (ms)",
                *(_num_cell(p50, t) for t in COLUMNS),
                f"{cells.num(cells.ratio(p50[HANGUP], p50[NGINX]))}{TIMES}",
                *_NO_TARGET,
                f"{cells.num(cells.ratio(p50[HANGUP], p50[BARE]))}{TIMES} bare",
                *_NO_TARGET,
            ]
        )
        rows.append(
            [
                f"{case_label}: p99 latency (ms)",
                *(_num_cell(p99, t) for t in COLUMNS),
                f"{cells.num(p99_ratio)}{TIMES}",
                "—" if max_p99 is None else f"≤ {max_p99:g}{TIMES} nginx",
                cells.met(
                    None if max_p99 is None or math.isnan(p99_ratio) else p99_ratio <= max_p99
                ),
                *_to_bare(p99, MAX_P99_TO_BARE, is_floor=False),
            ]
        )
        rows.append(_cpu_row(results, case, case_label))
    # Idle rows, then loaded rows, so that the load's own row follows the rows it loaded.
    rows.extend(
        _propagation_row(results.idle, kind, "idle", MAX_IDLE_PROPAGATION_P99_MS) for kind in Hangup
    )
    rows.extend(
        _propagation_row(results.loaded, kind, "under wrk load", MAX_LOADED_PROPAGATION_P99_MS)
        for kind in Hangup
    )
    load_rps = {
        target: cells.median_of(results.load[target], cells.rps)
        if target in results.load
        else math.nan
        for target in COLUMNS
    }
    rows.append(
        [
            "… the load meanwhile (req/s, 1 KiB from the hold origin)",
            *(cells.num(load_rps[target], 0) for target in COLUMNS),
            f"{cells.num(cells.ratio(load_rps[HANGUP], load_rps[NGINX]))}{TIMES}",
            *_NO_TARGET,
            *_NO_RATIO,
        ]
    )
    rows.append(
        [
            "idle RSS (MiB)",
            *(cells.idle_rss_cell(results.memory.get(target)) for target in COLUMNS),
            *_NO_RATIO,
            *_NO_RATIO,
        ]
    )
    memory = results.memory.get(HANGUP)
    per_connection = memory.per_connection_kib if memory is not None else math.nan
    held = memory.held if memory is not None else held_target
    rows.append(
        [
            f"RSS per idle keep-alive client connection, {held:,} held (KiB)",
            *(cells.per_connection_cell(results.memory.get(target)) for target in COLUMNS),
            "",
            f"≤ {MAX_KIB_PER_IDLE_CONNECTION:g} KiB",
            cells.met(
                None
                if math.isnan(per_connection)
                else per_connection <= MAX_KIB_PER_IDLE_CONNECTION
            ),
            *_NO_RATIO,
        ]
    )
    rows.extend(_workers_rows(results))
    rows.extend(_backend_rows(results))
    align = ["---", *["---:"] * (len(COLUMNS) + 1), "---", "---", "---:", "---", "---"]
    lines = [cells.markdown_row(header), cells.markdown_row(align)]
    lines.extend(cells.markdown_row(row) for row in rows)
    return "\n".join(lines)


_NO_TARGET = ("", "")
"""A triple's target and met cells, for a row with a ratio but no target."""
_NO_RATIO = ("", "", "")
"""A whole triple of empty cells: ratio, target, met."""


def _to_bare(values: dict[str, float], bound: float, *, is_floor: bool) -> list[str]:
    """Issue 16's triple for a case's req/s row (a floor) or p99 row (a ceiling)."""
    ratio = cells.ratio(values[HANGUP], values[BARE])
    ok = ratio >= bound if is_floor else ratio <= bound
    target = f"{'≥' if is_floor else '≤'} {bound:g}{TIMES} bare"
    return [f"{cells.num(ratio)}{TIMES} bare", target, cells.met(None if math.isnan(ratio) else ok)]


def _cpu_row(results: Results, case: str, case_label: str) -> list[str]:
    """CPU µs per request of each proxy in ``CPU_TARGETS`` (``benchmarks.cpu``), with the cores
    it kept busy, and hangup's ratios to nginx and to the bare proxy (no targets)."""
    uses = {target: results.cpu.get((target, case), []) for target in CPU_TARGETS}
    us = {target: cells.median_cpu(uses[target]) for target in CPU_TARGETS}
    return [
        f"{case_label}: CPU per request (µs; cores busy), median over rounds",
        *(cells.cpu_cell(uses[t]) if t in CPU_TARGETS else "—" for t in COLUMNS),
        f"{cells.num(cells.ratio(us[HANGUP], us[NGINX]))}{TIMES}",
        *_NO_TARGET,
        f"{cells.num(cells.ratio(us[HANGUP], us[BARE]))}{TIMES} bare",
        *_NO_TARGET,
    ]


def cpu_note(results: Results) -> str:
    """One line placing hangup's CPU per request next to Istio's published Envoy figure."""
    us = {t: cells.median_cpu(results.cpu.get((t, "1k"), [])) for t in CPU_TARGETS}
    to_istio = cells.ratio(us[HANGUP], ISTIO_ENVOY_US)
    return (
        f"CPU per request, next to a service mesh: hangup spent {cells.num(us[HANGUP], 0)} µs "
        f"of CPU per 1 KiB GET here (nginx {cells.num(us[NGINX], 0)}, the bare aiohttp proxy "
        f"{cells.num(us[BARE], 0)}); Istio publishes 0.35 vCPU per 1,000 requests/s for its "
        f"Envoy sidecar, about {ISTIO_ENVOY_US:.0f} µs a request (hangup here: "
        f"{cells.num(to_istio)}{TIMES} that), measured with mutual TLS and telemetry on (no TLS "
        "here; hangup's telemetry is its log line and metrics; istio.io, \"Performance and "
        'Scalability", Istio 1.12 to 1.15).'
    )


_HANGUP_ENDS = {Hangup.FIN: "EOF", Hangup.RST: "end"}
"""How each kind's rows name the origin's side. The FIN rows keep their earlier name (a proxy's
close() reaches the origin as EOF); after a RST a proxy may as well abort its upstream socket, so
"end". For both kinds the hold origin times whichever sign, EOF or reset, comes first."""


def _propagation_row(
    series: dict[tuple[str, Hangup], ProbeSeries], kind: Hangup, when: str, max_p99_ms: float
) -> list[str]:
    """Hang-ups of one kind in one phase: every target's samples, and whether hangup's p99 is
    within the bound ("—" when any of hangup's probes never arrived: the run fails for that)."""
    p99 = cells.p99_of(series.get((HANGUP, kind)))
    return [
        f"hang-up by {kind.value} → upstream {_HANGUP_ENDS[kind]}, {when}: median / p99 / max (ms)",
        *(cells.series_cell(series.get((target, kind))) for target in COLUMNS),
        "",
        f"p99 ≤ {max_p99_ms:g} ms",
        cells.met(None if math.isnan(p99) else p99 <= max_p99_ms),
        *_NO_RATIO,
    ]


def _workers_rows(results: Results) -> list[list[str]]:
    """hangup ``--workers 2`` in the hangup column, with its ratios to nginx and to one process."""
    label = results.labels.get(HANGUP_WORKERS, HANGUP_WORKERS)
    rows = []
    for case, case_label in CASES.items():
        # Issue 6's workers target is for the GETs, as its other throughput targets are.
        has_target = case in SIZES
        runs = results.throughput.get((HANGUP_WORKERS, case), [])
        rps = cells.median_of(runs, cells.rps)
        to_nginx = cells.ratio(
            rps, cells.median_of(results.throughput.get((NGINX, case), []), cells.rps)
        )
        to_one = cells.ratio(
            rps, cells.median_of(results.throughput.get((HANGUP, case), []), cells.rps)
        )
        rows.append(
            [
                f"{case_label}: req/s, {label} (median, and range over rounds)",
                *_in_hangup_column(cells.rps_cell(runs)),
                f"{cells.num(to_nginx)}{TIMES} nginx; {cells.num(to_one)}{TIMES} 1 process",
                f"≥ {MIN_WORKERS_RATIO:g}{TIMES} 1 process (free cores)" if has_target else "—",
                cells.met(
                    None if not has_target or math.isnan(to_one) else to_one >= MIN_WORKERS_RATIO
                ),
                *_NO_RATIO,
            ]
        )
        p99 = cells.median_of(runs, cells.p99)
        p99_nginx = cells.median_of(results.throughput.get((NGINX, case), []), cells.p99)
        rows.append(
            [
                f"{case_label}: p99 latency (ms), {label}",
                *_in_hangup_column(cells.num(p99)),
                f"{cells.num(cells.ratio(p99, p99_nginx))}{TIMES} nginx",
                *_NO_TARGET,
                *_NO_RATIO,
            ]
        )
    return rows


def _backend_rows(results: Results) -> list[list[str]]:
    """The backend half, a row per HTTP implementation: plain uvicorn's req/s in the direct
    column, with hangup's cancelling protocol in hangup's, and their ratio in issue 16's."""
    rows = []
    for http in backends.IMPLEMENTATIONS:
        plain, cancelling = backends.pair(http)
        plain_runs = results.backends.get(plain, [])
        cancelling_runs = results.backends.get(cancelling, [])
        ratio = cells.ratio(
            cells.median_of(cancelling_runs, cells.rps), cells.median_of(plain_runs, cells.rps)
        )
        shown = {DIRECT: cells.rps_cell(plain_runs), HANGUP: cells.rps_cell(cancelling_runs)}
        rows.append(
            [
                f"FastAPI hello world, uvicorn `--http {http}` (direct column) and "
                f"`{backends.BACKENDS[cancelling].name}` (hangup column): req/s (median, and "
                "range over rounds)",
                *(shown.get(target, "—") for target in COLUMNS),
                *_NO_RATIO,
                f"{cells.num(ratio)}{TIMES} plain uvicorn",
                f"≥ {MIN_BACKEND_RATIO:g}{TIMES} plain uvicorn",
                cells.met(None if math.isnan(ratio) else ratio >= MIN_BACKEND_RATIO),
            ]
        )
    return rows


def _in_hangup_column(cell: str) -> list[str]:
    return [cell if target == HANGUP else "—" for target in COLUMNS]


def _to_nginx(target: str, values: dict[str, float]) -> str | None:
    """The ceiling's ratio to nginx, shown in its own cells (the ratio column is hangup's)."""
    if target != BARE or math.isnan(values[BARE]):
        return None
    return f"{cells.num(cells.ratio(values[BARE], values[NGINX]))}{TIMES} nginx"


def _num_cell(values: dict[str, float], target: str) -> str:
    ratio = _to_nginx(target, values)
    text = cells.num(values[target])
    return text if ratio is None else f"{text} ({ratio})"
