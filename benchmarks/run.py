"""``benchmarks/run [--quick] [--json PATH]``: hangup next to nginx and the bare origin, one table.

The plan (issue 6, and the measuring half of issue 16):

1. Find wrk and nginx, installing Debian's packages when they are missing.
2. Start, each pinned with taskset: the origin (nginx, one worker, static ``/1k`` and ``/100k``,
   and a fixed 1 KiB answer to ``POST /post1k``: ``benchmarks.post``) on the load core, next to
   wrk and this driver; the reference proxy (nginx, one worker, HTTP/1.1 upstream keep-alive),
   hangup (one process, default configuration, its canonical log line written to /dev/null)
   and the bare aiohttp proxy (``bare_aiohttp_proxy``: the ceiling aiohttp's server puts on
   hangup; its throughput and CPU only) on the other core; and hangup ``--workers 2`` on both
   cores, so one of its workers shares the load core (its throughput only). In this process:
   the hold origin for hang-up timing, behind a second nginx ``server`` and a second hangup
   process. For the backend half (``benchmarks.backends``), on the proxy core: FastAPI's hello
   world on four uvicorn processes, plain and with hangup's cancelling protocol, for httptools
   and for h11.
3. Check that every proxy answers ``/1k`` and ``/100k`` whole, and ``POST /post1k`` with 1 KiB
   twice on one connection (no body left behind on it); and every uvicorn ``GET /``.
4. Memory: RSS of each proxy idle, then with N idle keep-alive client connections held.
5. Warm-up, then interleaved rounds (the order of targets and cases rotates each round): wrk
   -t1 -c64 for every target and case (a GET of each size, the POST), with the CPU time nginx's
   worker, the bare proxy and hangup used meanwhile (``benchmarks.cpu``); then each uvicorn at
   ``GET /``; then, per target, hang-ups one at a time, FIN and RST in turn, while idle and while
   wrk loads the same proxy.
6. Print one markdown table (medians over rounds; hang-ups pooled over rounds) and a line
   placing the CPU per request next to Istio's sidecar, stop every process by PID, and exit 1
   if anything did not work (an error answer, a hang-up that never reached the origin), whatever
   the speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop

from benchmarks import backends, client, cpu, interference, memory, nginx, post
from benchmarks.hello_app import ANSWER_SIZE as HELLO_ANSWER_SIZE
from benchmarks.hold_origin import HoldOrigin
from benchmarks.plan import BARE_PROXY_ARGV, FULL, HANGUP_SCRIPT, QUICK, ROOT, Plan
from benchmarks.processes import (
    LOOPBACK,
    Fleet,
    Pinning,
    StartError,
    children_of,
    free_port,
    pin_driver,
    wait_until_listening,
    wait_until_ready,
)
from benchmarks.propagation import Hangup, ProbeSeries, probe_series
from benchmarks.provenance import preamble
from benchmarks.report import (
    BARE,
    CASES,
    CPU_TARGETS,
    DIRECT,
    HANGUP,
    HANGUP_WORKERS,
    NGINX,
    POST,
    TARGETS,
    THROUGHPUT_TARGETS,
    WORKERS,
    Results,
    cpu_note,
    render,
)
from benchmarks.tools import ToolError, Tools, ensure_tools, version_of
from benchmarks.wrk import Post, WrkError, WrkResult, run_wrk

POST_LOAD = Post(post.BODY, post.CONTENT_TYPE)
"""What wrk sends for the POST case."""


@dataclass(frozen=True)
class Endpoint:
    """Where a target is reached: ``port`` leads to the nginx origin, ``hold_port`` to the hold
    origin in this process."""

    port: int
    hold_port: int | None = None
    """None for a target measured for throughput only (the bare proxy, hangup ``--workers 2``)."""
    pid: int | None = None
    """The process whose RSS counts (nginx's worker, hangup's only process)."""
    helper_pid: int | None = None
    """A process counted apart (nginx's master)."""
    cpu_pids: tuple[int, ...] = ()
    """The processes whose CPU time per request counts (``benchmarks.cpu``): nginx's worker,
    hangup's or the bare proxy's one process; none for the others."""


@dataclass
class Run:
    """One benchmark run's moving parts."""

    plan: Plan
    tools: Tools
    pinning: Pinning
    fleet: Fleet
    prefix: Path
    say: Callable[[str], None]
    origin: HoldOrigin = field(default_factory=HoldOrigin)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """What did not work: the run exits 1."""
    warnings: list[str] = field(default_factory=list)
    """What makes a number less trustworthy without anything failing: printed, exit 0."""
    interference: list[tuple[str, float]] = field(default_factory=list)
    """(what ran, cores other processes took meanwhile) for every measured wrk run."""

    def url(self, target: str, path: str, *, hold: bool = False) -> str:
        endpoint = self.endpoints[target]
        port = endpoint.hold_port if hold else endpoint.port
        if port is None:
            raise RuntimeError(f"{target} has no hold origin behind it")
        return f"http://{LOOPBACK}:{port}{path}"

    async def wrk(
        self, url: str, seconds: int, *, label: str | None = None, post: Post | None = None
    ) -> WrkResult:
        """One wrk run (GETs, or ``post``'s POSTs); with a ``label``, it is measured, and others'
        CPU use meanwhile noted."""
        before = interference.read(self.fleet.pids())
        result = await run_wrk(
            self.fleet,
            self.tools.wrk,
            url,
            seconds=seconds,
            core=self.pinning.load_core,
            post=post,
        )
        if label is not None:
            after = interference.read(self.fleet.pids())
            self.interference.append((label, interference.others_cores(before, after)))
        problem = result.problem()
        if problem is not None:
            self.problems.append(f"wrk on {url}: {problem}")
        return result

    async def wrk_case(
        self, target: str, case: str, seconds: int, *, label: str | None = None
    ) -> WrkResult:
        """wrk on one throughput case (a key of ``CASES``) through ``target``."""
        load = POST_LOAD if case == POST else None
        return await self.wrk(self.url(target, f"/{case}"), seconds, label=label, post=load)


# --- start-up ---------------------------------------------------------------------------------


async def start_targets(run: Run) -> None:
    hold_port = await run.origin.start()
    origin_port, proxy_port, proxy_hold_port = free_port(), free_port(), free_port()
    hangup_port, hangup_hold_port = free_port(), free_port()
    workers_port, workers_admin_port = free_port(), free_port()
    bare_port = free_port()
    # uvicorn and FastAPI take a while to import: started first, waited for last.
    backend_ports = {key: free_port() for key in backends.BACKENDS}
    starting = {
        key: backends.spawn(run.fleet, key, port, core=run.pinning.proxy_core, prefix=run.prefix)
        for key, port in backend_ports.items()
    }
    www = nginx.write_site(run.prefix)

    origin_config = nginx.origin_config(run.prefix, origin_port, www)
    origin = await _start_nginx(run, "origin", origin_config, origin_port, run.pinning.load_core)
    routes = [nginx.Route(proxy_port, origin_port), nginx.Route(proxy_hold_port, hold_port)]
    proxy_config = nginx.proxy_config(run.prefix, routes)
    proxy = await _start_nginx(run, "proxy", proxy_config, proxy_port, run.pinning.proxy_core)
    workers = await _forked_workers(proxy)
    for worker in workers:
        run.fleet.adopt("nginx proxy worker", worker)
    for worker in await _forked_workers(origin):
        run.fleet.adopt("nginx origin worker", worker)
    hangup = await _start_hangup(run, hangup_port, origin_port)
    await _start_hangup(run, hangup_hold_port, hold_port)
    await _start_hangup_workers(run, workers_port, workers_admin_port, origin_port)
    bare = await _start_bare_proxy(run, bare_port, origin_port)
    if len(workers) != 1:
        raise StartError(f"the nginx proxy should run one worker, found {len(workers)}")
    for key, process in starting.items():
        log = run.prefix / backends.stderr_name(key)
        await wait_until_listening(key, process, backend_ports[key], log)
    run.endpoints = {
        DIRECT: Endpoint(origin_port, hold_port),
        NGINX: Endpoint(
            proxy_port, proxy_hold_port, pid=workers[0], helper_pid=proxy, cpu_pids=(workers[0],)
        ),
        HANGUP: Endpoint(hangup_port, hangup_hold_port, pid=hangup, cpu_pids=(hangup,)),
        HANGUP_WORKERS: Endpoint(workers_port),
        BARE: Endpoint(bare_port, cpu_pids=(bare,)),
        **{key: Endpoint(port) for key, port in backend_ports.items()},
    }


async def _start_nginx(run: Run, name: str, config: str, port: int, core: int | None) -> int:
    argv = nginx.nginx_argv(run.tools.nginx, run.prefix, name, config)
    log = run.prefix / f"{name}-error.log"
    process = run.fleet.spawn(f"nginx {name}", argv, core=core)
    await wait_until_listening(f"nginx {name}", process, port, log)
    return process.pid


async def _forked_workers(master: int) -> list[int]:
    """The nginx master's worker PIDs, once it has forked them.

    The master listens before it forks, so "listening" does not mean "has a worker"; on a loaded
    machine the fork can come a little later. /proc offers nothing to wait on, so it is looked at
    again every 10 ms, for 10 s at most (an empty list then fails the start check).
    """
    for _ in range(1000):
        if workers := children_of(master):
            return workers
        await asyncio.sleep(0.01)
    return children_of(master)


def _hangup_argv(port: int, upstream_port: int, *extra: str) -> list[str]:
    if not HANGUP_SCRIPT.exists():
        raise StartError(f"{HANGUP_SCRIPT} is missing: run `benchmarks/run`, which installs it")
    return [
        str(HANGUP_SCRIPT),
        "--listen",
        f"{LOOPBACK}:{port}",
        "--upstream",
        f"http://{LOOPBACK}:{upstream_port}",
        *extra,
    ]


async def _start_hangup(run: Run, port: int, upstream_port: int) -> int:
    argv = _hangup_argv(port, upstream_port)
    log = run.prefix / f"hangup-{port}.stderr"
    with log.open("wb") as stderr:
        # The default configuration, canonical log line included; stdout goes to /dev/null so
        # that no terminal or pipe reader sets the pace.
        process = run.fleet.spawn(
            f"hangup-proxy :{port}", argv, core=run.pinning.proxy_core, stderr=stderr
        )
    await wait_until_listening("hangup-proxy", process, port, log)
    return process.pid


async def _start_hangup_workers(run: Run, port: int, admin_port: int, upstream_port: int) -> None:
    """hangup ``--workers 2``, otherwise as above; started once /readyz says every worker listens.

    On both cores: with two cores in all, one worker shares the load core with wrk and the
    origin, so its figure is a floor for what two free cores would give.
    """
    argv = _hangup_argv(
        port, upstream_port, "--workers", str(WORKERS), "--admin", f"{LOOPBACK}:{admin_port}"
    )
    log = run.prefix / f"hangup-{port}.stderr"
    name = f"hangup-proxy --workers {WORKERS} :{port}"
    with log.open("wb") as stderr:
        process = run.fleet.spawn(name, argv, core=run.pinning.both_cores, stderr=stderr)
    await wait_until_ready(name, process, admin_port, log)
    for worker in children_of(process.pid):
        run.fleet.adopt("hangup worker", worker)


BARE_PROXY_STDERR = "bare-aiohttp-proxy.stderr"


async def _start_bare_proxy(run: Run, port: int, upstream_port: int) -> int:
    """The aiohttp-server ceiling, on the proxy core like hangup's one process; its PID."""
    argv = [
        *BARE_PROXY_ARGV,
        "--listen",
        f"{LOOPBACK}:{port}",
        "--upstream",
        f"{LOOPBACK}:{upstream_port}",
    ]
    log = run.prefix / BARE_PROXY_STDERR
    name = f"bare aiohttp proxy :{port}"
    with log.open("wb") as stderr:
        process = run.fleet.spawn(name, argv, core=run.pinning.proxy_core, stderr=stderr, cwd=ROOT)
    await wait_until_listening(name, process, port, log)
    return process.pid


def stderr_complaints(prefix: Path) -> list[str]:
    """What the bare proxy and the uvicorn backends wrote on stderr: nothing, unless something in
    one broke (a traceback; uvicorn logs at warning), which would make its number no measure of
    a working server."""
    found = []
    for name in (BARE_PROXY_STDERR, *map(backends.stderr_name, backends.BACKENDS)):
        log = prefix / name
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        found += [f"{name}: {line}" for line in lines[:20]]
    return found


async def check_answers(run: Run) -> None:
    """Every target answers every path whole, before anything is timed."""
    for target in THROUGHPUT_TARGETS:
        for path, size in nginx.BODY_SIZES.items():
            sock, answer = await client.get(run.endpoints[target].port, f"/{path}")
            sock.close()
            _expect(answer, f"{target} answered GET /{path}", size)
    request = client.post_request(f"/{POST}", post.BODY, post.CONTENT_TYPE)
    for target in THROUGHPUT_TARGETS:
        sock = await client.connect(run.endpoints[target].port)
        try:
            # Twice on one connection: a body left unread on it would spoil the second answer,
            # and under wrk every request after the first.
            for turn in ("first", "second"):
                answer = await client.ask(sock, request)
                _expect(answer, f"{target} answered the {turn} POST /{POST}", post.ANSWER_SIZE)
        finally:
            sock.close()
    for key in backends.BACKENDS:
        sock, answer = await client.get(run.endpoints[key].port, backends.PATH)
        sock.close()
        _expect(answer, f"{key} answered GET {backends.PATH}", HELLO_ANSWER_SIZE)


def _expect(answer: client.Answer, what: str, size: int) -> None:
    if (answer.status, answer.body_length) != (200, size):
        raise StartError(
            f"{what} with {answer.status} and {answer.body_length} bytes; expected 200 and {size}"
        )


# --- phases -----------------------------------------------------------------------------------


async def measure_memory(run: Run, results: Results) -> None:
    for target in (NGINX, HANGUP):
        endpoint = run.endpoints[target]
        assert endpoint.pid is not None  # noqa: S101 - set for both proxies in start_targets
        idle = memory.rss_kib(endpoint.pid)
        run.say(f"memory: holding {run.plan.held} idle connections to {target}")
        held = await memory.hold_connections(endpoint.port, run.plan.held)
        try:
            # Let the last responses' buffers be released before reading.
            await asyncio.sleep(0.5)
            loaded = memory.rss_kib(endpoint.pid)
        finally:
            memory.release(held)
        helper = memory.rss_kib(endpoint.helper_pid) if endpoint.helper_pid else 0
        results.memory[target] = memory.MemoryReading(idle, loaded, run.plan.held, helper)
        # Give the proxy time to notice the closed connections before the next phase.
        await asyncio.sleep(0.5)


async def warm_up(run: Run) -> None:
    run.say("warm-up")
    for target in THROUGHPUT_TARGETS:
        for case in CASES:
            await run.wrk_case(target, case, run.plan.warmup_seconds)
        if target in (NGINX, HANGUP):
            await run.wrk(run.url(target, "/1k", hold=True), run.plan.warmup_seconds)
    for key in backends.BACKENDS:
        await run.wrk(run.url(key, backends.PATH), run.plan.warmup_seconds)


def rotated(items: tuple[str, ...], by: int) -> list[str]:
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


async def throughput_round(run: Run, results: Results, number: int) -> None:
    for target in rotated(THROUGHPUT_TARGETS, number):
        for case in rotated(tuple(CASES), number):
            run.say(f"round {number + 1}: {target} {case}")
            label = f"{target} {case} round {number + 1}"
            pids = run.endpoints[target].cpu_pids
            # Read right before wrk starts and right after it exits (benchmarks.cpu).
            before = cpu.read(pids)
            result = await run.wrk_case(target, case, run.plan.seconds, label=label)
            after = cpu.read(pids)
            results.throughput.setdefault((target, case), []).append(result)
            if target in CPU_TARGETS:
                use = cpu.use_between(before, after, result.requests)
                results.cpu.setdefault((target, case), []).append(use)


async def backend_round(run: Run, results: Results, number: int) -> None:
    """Each uvicorn of the backend half in turn, the order rotated as the proxies' is."""
    for key in rotated(tuple(backends.BACKENDS), number):
        run.say(f"round {number + 1}: {key}")
        label = f"{key} round {number + 1}"
        result = await run.wrk(run.url(key, backends.PATH), run.plan.seconds, label=label)
        results.backends.setdefault(key, []).append(result)


async def hangup_round(run: Run, results: Results, number: int) -> None:
    for target in rotated(TARGETS, number):
        port = run.endpoints[target].hold_port
        assert port is not None  # noqa: S101 - every target in TARGETS has a hold origin
        run.say(f"round {number + 1}: {target} hang-ups, idle")
        idle = await probe_series(run.origin, port, run.plan.probes_per_round)
        _pool(results.idle, target, idle)
        if target == DIRECT:
            # wrk straight at the hold origin would load this driver, not a proxy.
            continue
        run.say(f"round {number + 1}: {target} hang-ups, under load")
        loaded, load = await _probes_under_load(run, target, port)
        _pool(results.loaded, target, loaded)
        results.load.setdefault(target, []).append(load)


def _pool(
    pooled: dict[tuple[str, Hangup], ProbeSeries], target: str, series: dict[Hangup, ProbeSeries]
) -> None:
    for kind, one in series.items():
        pooled.setdefault((target, kind), ProbeSeries()).extend(one)


async def _probes_under_load(
    run: Run, target: str, port: int
) -> tuple[dict[Hangup, ProbeSeries], WrkResult]:
    seconds = run.plan.load_seconds
    started = time.monotonic()
    label = f"{target} hang-ups under load"
    load = asyncio.create_task(run.wrk(run.url(target, "/1k", hold=True), seconds, label=label))
    try:
        # Let wrk open its connections and reach full rate first.
        await asyncio.sleep(min(1.0, seconds / 4))
        series = await probe_series(run.origin, port, run.plan.probes_per_round)
        elapsed = time.monotonic() - started
        if elapsed > seconds:
            run.warnings.append(f"{target}: hang-ups under load outlasted the {seconds} s load")
        else:
            # Said every time, so that the margin left is seen before it runs out.
            run.say(f"{target}: hang-ups under load done {elapsed:.1f} s into the {seconds} s load")
        return series, await load
    finally:
        if not load.done():
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load


def note_missed_hangups(run: Run, results: Results) -> None:
    """Each target's hang-ups that never reached the origin, per kind and phase, over all rounds
    (once, after the last: the counts are pooled)."""
    for name, phase in (("idle", results.idle), ("under load", results.loaded)):
        for (target, kind), pooled in phase.items():
            if pooled.missed:
                run.problems.append(
                    f"{target}: {pooled.missed} hang-ups by {kind.value} {name} "
                    "never reached the origin"
                )


async def measure(run: Run) -> Results:
    try:
        await start_targets(run)
        await check_answers(run)
        results = Results(labels=_labels(run.tools))
        await measure_memory(run, results)
        await warm_up(run)
        for number in range(run.plan.rounds):
            await throughput_round(run, results, number)
            await backend_round(run, results, number)
            await hangup_round(run, results, number)
        note_missed_hangups(run, results)
        return results
    finally:
        await run.origin.close()


# --- output -----------------------------------------------------------------------------------


def _labels(tools: Tools) -> dict[str, str]:
    nginx_version = version_of([str(tools.nginx), "-v"]).rpartition("/")[2] or "?"
    return {
        DIRECT: "direct to origin",
        NGINX: f"nginx {nginx_version} (1 worker)",
        HANGUP: "hangup (1 process)",
        HANGUP_WORKERS: f"hangup `--workers {WORKERS}`",
        BARE: "bare aiohttp proxy (a ceiling, not a product)",
    }


NOTES = """\
"direct to origin" is wrk against the nginx origin itself, on the same core (not a strict
ceiling: a proxy between them lets wrk and the origin batch more work per wake-up); its hang-up
row is the hold origin reached without a proxy (the floor of the measurement). The first ratio
column is hangup ÷ nginx in this run (issue 6's targets); the second is issue 16's: hangup ÷ the
bare aiohttp proxy, and in the FastAPI rows hangup's cancelling protocol ÷ plain uvicorn. nginx
and hangup log one line per request to /dev/null. "bare aiohttp proxy"
(benchmarks/bare_aiohttp_proxy.py) is a reference ceiling, not a product: aiohttp's low-level
server as hangup runs it (handler_cancellation, no access log, uvloop, same core) with a pooled
httptools upstream and none of hangup's features (no log line, metrics or header rewriting; a
request body is read whole and sent with its head). Any proxy on aiohttp's server does at least
its work per request, so a req/s target above its ratio to nginx (in its own cells) is out of
reach on that server, on this machine. The POST is an API call, a 1.5 KiB JSON body sent with
its head in one write, answered by the origin with a fixed 1 KiB; nginx keeps its default
request buffering; issue 6 set no target for it. CPU per request is the CPU time (utime +
stime in /proc/PID/stat) of nginx's worker, the bare proxy's or hangup's process over the timed
wrk run, divided by the requests wrk counted; "cores busy" is that time over the run's wall
time (1.00: one saturated core, when CPU per request is 1 ÷ req/s). The FastAPI rows are a
hello world on one uvicorn process each (--log-level warning --no-access-log), plain uvicorn in
the direct column, with hangup's cancelling protocol in hangup's, under the same wrk load at
GET /. hangup `--workers 2` runs on both cores: on a 2-core machine one worker shares its core
with wrk, the origin and this driver, so its ratio to one process understates what two free
cores give."""


def to_json(results: Results, run: Run) -> dict[str, object]:
    return {
        "plan": asdict(run.plan),
        "labels": results.labels,
        "throughput": {
            f"{target}/{size}": [asdict(r) for r in runs]
            for (target, size), runs in results.throughput.items()
        },
        # The FIN keys keep the names they had before RST probes, so older files still compare.
        "hangup_idle_ms": _by_target(results.idle, Hangup.FIN),
        "hangup_loaded_ms": _by_target(results.loaded, Hangup.FIN),
        "hangup_rst_idle_ms": _by_target(results.idle, Hangup.RST),
        "hangup_rst_loaded_ms": _by_target(results.loaded, Hangup.RST),
        "load_during_hangups": {t: [asdict(r) for r in runs] for t, runs in results.load.items()},
        "memory_kib": {target: asdict(reading) for target, reading in results.memory.items()},
        "cpu": {
            f"{target}/{case}": [
                {**asdict(use), "us_per_request": use.us_per_request} for use in uses
            ]
            for (target, case), uses in results.cpu.items()
        },
        "backends": {key: [asdict(r) for r in runs] for key, runs in results.backends.items()},
        "problems": run.problems,
        "warnings": run.warnings,
        "others_cores": [{"run": label, "cores": cores} for label, cores in run.interference],
    }


def _by_target(
    phase: dict[tuple[str, Hangup], ProbeSeries], kind: Hangup
) -> dict[str, dict[str, object]]:
    return {
        target: asdict(series) for (target, of_kind), series in phase.items() if of_kind is kind
    }


# --- entry point ------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute (CI)")
    parser.add_argument("--json", type=Path, help="also write every sample to this JSON file")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    command = "benchmarks/run" + (" --quick" if args.quick else "")
    try:
        tools = ensure_tools(_say)
    except ToolError as exc:
        _say(str(exc))
        return 2
    pinning = pin_driver()
    # Held client sockets here, and as many again in the proxy (which inherits the limit).
    limit = memory.raise_open_file_limit(plan.held * 3 + 1024)
    if limit < plan.held * 2 + 256:
        _say(f"RLIMIT_NOFILE is {limit}: too low to hold {plan.held} connections")
        return 2
    fleet = Fleet(_say, tools.taskset)
    with tempfile.TemporaryDirectory(prefix="hangup-bench-") as tmp:
        prefix = Path(tmp)
        # nginx's workers drop root privileges and must still read the site and temp dirs.
        prefix.chmod(0o755)
        run = Run(plan, tools, pinning, fleet, prefix, _say)
        try:
            results = uvloop.run(measure(run))
        except (StartError, WrkError, OSError, RuntimeError, TimeoutError) as exc:
            _say(f"the benchmark did not complete: {type(exc).__name__}: {exc}")
            return 1
        finally:
            fleet.stop_all()
        run.warnings += nginx.complaints(prefix)
        run.problems += stderr_complaints(prefix)
    print(preamble(plan, tools, pinning, run.interference, command), end="\n\n")
    print(render(results, held_target=plan.held), end="\n\n")
    print(cpu_note(results), end="\n\n")
    print(NOTES)
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(results, run), indent=2) + "\n")
    for warning in run.warnings:
        _say(f"warning: {warning}")
    for problem in run.problems:
        _say(f"problem: {problem}")
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
