"""One wrk run: keep-alive load on one URL (GETs, or POSTs of one body), read back from
``report.lua``'s JSON line."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.processes import Fleet, wait_exit

REPORT_SCRIPT = Path(__file__).with_name("report.lua")
CONNECTIONS = 64
"""wrk -t1 -c64, as in the issue's reference numbers."""
_MARK = "WRK_JSON "


class WrkError(Exception):
    """wrk failed, or printed no summary."""


@dataclass(frozen=True)
class Post:
    """What each of wrk's requests sends instead of a GET: this body, with its Content-Type."""

    body: bytes
    content_type: str


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    """connect, read, write errors and timeouts, added up."""
    non_2xx: int

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def problem(self) -> str | None:
        """Why this run does not count as a working benchmark, if it does not."""
        if self.requests == 0:
            return "no request completed"
        if self.non_2xx:
            return f"{self.non_2xx} answers were not 2xx or 3xx"
        return None


def parse_report(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith(_MARK):
            data = json.loads(line.removeprefix(_MARK))
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                max_ms=data["max_us"] / 1000,
                socket_errors=sum(
                    int(data[key]) for key in ("connect", "read", "write", "timeout")
                ),
                non_2xx=int(data["status"]),
            )
    raise WrkError(f"wrk printed no {_MARK.strip()} line:\n{output[-2000:]}")


def script_for(post: Post | None) -> str:
    """``report.lua``, after a POST's set-up if there is one: wrk takes a single ``-s`` script.

    wrk builds its one request from these globals (``wrk.format`` adds Content-Length), so each
    POST goes out head and body in one write, as a client's small API call does.
    """
    report = REPORT_SCRIPT.read_text()
    if post is None:
        return report
    body = post.body.decode("ascii")
    # A Lua long string keeps the body byte for byte, quotes included, unless it holds the
    # closing bracket or starts with a newline (which Lua drops).
    if "]==]" in body or body.startswith(("\n", "\r")):
        raise ValueError("the body does not fit in a [==[ Lua long string ]==]")
    setup = (
        "-- Written by benchmarks/wrk.py for one run: a POST, then report.lua.\n"
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body}]==]\n"
        f'wrk.headers["Content-Type"] = "{post.content_type}"\n'
    )
    return setup + report


async def run_wrk(
    fleet: Fleet,
    wrk: Path,
    url: str,
    *,
    seconds: float,
    core: int | None,
    post: Post | None = None,
) -> WrkResult:
    """Run ``wrk -t1 -c64 --latency`` for ``seconds`` (GETs, or ``post``'s POSTs), without
    blocking this event loop (the hold origin in this process may be serving the load)."""
    with (
        tempfile.NamedTemporaryFile("w", suffix=".lua") as script,
        tempfile.TemporaryFile() as output,
    ):
        script.write(script_for(post))
        script.flush()
        argv = [
            str(wrk),
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script.name,
            url,
        ]
        process = fleet.spawn(f"wrk {url}", argv, core=core, stdout=output, stderr=output)
        await wait_exit(f"wrk on {url}", process, within=seconds + 30)
        fleet.forget(process)
        output.seek(0)
        text = output.read().decode(errors="replace")
    if process.returncode != 0:
        raise WrkError(f"wrk on {url} exited with {process.returncode}:\n{text[-2000:]}")
    return parse_report(text)
