"""Provenance of a run: the machine, the software, the commit measured, and who else was busy."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from benchmarks.interference import DISTURBED_CORES
from benchmarks.plan import QUICK, Plan
from benchmarks.processes import Pinning
from benchmarks.tools import Tools, version_of
from benchmarks.wrk import CONNECTIONS


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def source_revision() -> str:
    """The commit measured, with ``+ local changes`` when the work tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    # Where hangup-proxy imports proxy from: a console script has no working directory on its
    # path, so PYTHONPATH can point it at another copy (a snapshot of one commit).
    found = subprocess.run(
        [sys.executable, "-c", "import proxy; print(proxy.__file__)"],
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    source = Path(found.stdout.strip()).parent
    if found.returncode != 0:
        return "unknown (proxy is not importable)"
    if source != root / "proxy":
        revision = source.parent / "REVISION"
        named = f" ({revision.read_text().strip()})" if revision.exists() else ""
        return f"the copy in {source}{named}"
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run(  # noqa: S603 - fixed git command line, no shell
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603 - fixed git command line, no shell
            [*git, "status", "--porcelain", "--", "proxy"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" + local changes to proxy/" if dirty else "")


def preamble(
    plan: Plan,
    tools: Tools,
    pinning: Pinning,
    interference: list[tuple[str, float]],
    command: str,
) -> str:
    """Where the numbers came from: when, on what, measuring which code, disturbed or not."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(
        [
            version_of([str(tools.nginx), "-v"]).removeprefix("nginx version: "),
            version_of([str(tools.wrk), "-v"]).split(" [")[0],
            f"Python {platform.python_version()}",
            f"aiohttp {metadata.version('aiohttp')}",
            f"uvloop {metadata.version('uvloop')}",
            f"uvicorn {metadata.version('uvicorn')}",
            f"FastAPI {metadata.version('fastapi')}",
        ]
    )
    mode = " (QUICK MODE: a smoke run, not a measurement)" if plan is QUICK else ""
    lines = [
        f"hangup benchmark, {now}{mode}",
        "",
        f"- machine: {os.cpu_count()} cores ({cpu_model()}), Linux {platform.release()}",
        f"- pinning: {pinning.describe()}",
        f"- software: {versions}; hangup at {source_revision()}",
        f"- load: wrk -t1 -c{CONNECTIONS} keep-alive, {plan.rounds} interleaved round(s) of "
        f"{plan.seconds} s per target and case (GET /1k, GET /100k, POST /post1k), "
        "medians over rounds",
        f"- hang-ups: {plan.probes_per_round * plan.rounds} by FIN and as many by RST per target "
        "idle, and as many again under load, one at a time, FIN and RST in turn, client's hang-up "
        "→ the origin's first sign of an end (EOF or reset) on the proxy's upstream connection",
        "- CPU per request: CPU time of nginx's worker, the bare aiohttp proxy and hangup over "
        "each timed wrk run ÷ the requests it counted",
        "- backend half: FastAPI's hello world on one uvicorn process each (httptools, h11; plain "
        "and with hangup's cancelling protocol) on the proxy core, the same wrk load at GET /",
        f"- memory: {plan.held:,} idle keep-alive client connections held",
        f"- command: `{command}`",
        f"- other processes on this machine: {describe_interference(interference)}",
    ]
    return "\n".join(lines)


def describe_interference(runs: list[tuple[str, float]]) -> str:
    if not runs:
        return "not measured"
    cores = [value for _, value in runs]
    text = (
        f"took {statistics.median(cores):.2f} cores (median; max {max(cores):.2f}) "
        "during the measured runs"
    )
    disturbed = [f"{label} ({value:.2f})" for label, value in runs if value > DISTURBED_CORES]
    if disturbed:
        text += f"; DISTURBED (over {DISTURBED_CORES} cores): " + ", ".join(disturbed)
    return text
