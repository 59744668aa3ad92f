"""``python -m benchmarks.profile``: where hangup spends its time under the benchmark's load.

Starts the benchmark's nginx origin and one hangup process (pinned as in ``benchmarks.run``; or,
with ``--proxy bare``, the bare aiohttp proxy hangup is measured against, to compare both the same
way), loads it with wrk -t1 -c64 on ``/1k`` (or ``--size 100k``), and samples it with py-spy
(``pip install py-spy`` into the venv; it is not a dependency of the project). Prints the share
of samples per area and the top functions by self and by inclusive time, as markdown tables.
Only busy samples are taken (py-spy leaves out a thread waiting in epoll), so "busy" is samples
over rate times seconds. Time in C under a Python frame (a ``transport.write``, which on loopback
runs the peer's TCP receive path too) is charged to that frame; ``Runner.run`` itself is uvloop's
own C code (reading sockets, dispatching callbacks).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import uvloop

from benchmarks import cpu, nginx
from benchmarks.plan import BARE_PROXY_ARGV, HANGUP_SCRIPT, ROOT
from benchmarks.processes import (
    LOOPBACK,
    Fleet,
    Pinning,
    StartError,
    free_port,
    pin_driver,
    wait_exit,
    wait_until_listening,
)
from benchmarks.samples import parse_collapsed, render_cprofile, render_samples
from benchmarks.tools import ToolError, Tools, ensure_tools
from benchmarks.wrk import WrkError, WrkResult, run_wrk


def _py_spy() -> Path | None:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return beside
    found = shutil.which("py-spy")
    return Path(found) if found is not None else None


def _say(message: str) -> None:
    print(f"profile: {message}", file=sys.stderr, flush=True)


class Session:
    """One profiling run: the origin, hangup (maybe under cProfile), and wrk, all in ``fleet``."""

    def __init__(
        self,
        fleet: Fleet,
        prefix: Path,
        args: argparse.Namespace,
        tools: Tools,
        pinning: Pinning,
    ) -> None:
        self.fleet = fleet
        self.prefix = prefix
        self.args = args
        self.tools = tools
        # Chosen before the driver pinned itself: asked again now, it would see one core.
        self.pinning = pinning
        self.proxy_port = free_port()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.proxy_port}/{self.args.size}"

    async def start(self, prefix_argv: list[str]) -> subprocess.Popen[bytes]:
        """The origin, then hangup (its command line prefixed, for cProfile), both listening."""
        origin_port = free_port()
        www = nginx.write_site(self.prefix)
        config = nginx.origin_config(self.prefix, origin_port, www)
        origin = self.fleet.spawn(
            "nginx origin",
            nginx.nginx_argv(self.tools.nginx, self.prefix, "origin", config),
            core=self.pinning.load_core,
        )
        log = self.prefix / "origin-error.log"
        await wait_until_listening("nginx origin", origin, origin_port, log)
        listen = f"{LOOPBACK}:{self.proxy_port}"
        if self.args.proxy == "bare":
            # The ceiling hangup is measured against (issue 16), profiled the same way.
            argv = [*BARE_PROXY_ARGV, "--listen", listen, "--upstream", f"{LOOPBACK}:{origin_port}"]
            if prefix_argv:
                # Under cProfile it must import ``benchmarks`` from the checkout: no ``-P``.
                argv = [*(arg for arg in prefix_argv if arg != "-P"), *argv[1:]]
        else:
            upstream = f"http://{LOOPBACK}:{origin_port}"
            argv = [*prefix_argv, str(HANGUP_SCRIPT), "--listen", listen, "--upstream", upstream]
        proxy = self.fleet.spawn(self.name, argv, core=self.pinning.proxy_core, cwd=ROOT)
        await wait_until_listening(self.name, proxy, self.proxy_port, None)
        return proxy

    @property
    def name(self) -> str:
        return "bare aiohttp proxy" if self.args.proxy == "bare" else "hangup-proxy"

    async def load(self, seconds: int) -> WrkResult:
        return await run_wrk(
            self.fleet, self.tools.wrk, self.url, seconds=seconds, core=self.pinning.load_core
        )

    def headline(self, load: WrkResult, how: str) -> str:
        return (
            f"{self.name} under wrk -t1 -c64 on /{self.args.size}: "
            f"{load.requests_per_second:,.0f} req/s while {how}"
        )


async def profile_with_py_spy(session: Session, py_spy: Path) -> str:
    args = session.args
    hangup = await session.start([])
    await session.load(2)
    output = session.prefix / "profile.txt"
    record = [
        str(py_spy),
        "record",
        "--pid",
        str(hangup.pid),
        "--duration",
        str(args.seconds),
        "--rate",
        str(args.rate),
        "--format",
        "raw",
        "--function",
        "--output",
        str(output),
        # Native frames need the process paused at each sample; Python-only sampling does not.
        "--native" if args.native else "--nonblocking",
    ]
    log_path = session.prefix / "py-spy.log"
    with log_path.open("wb") as log:
        sampler = session.fleet.spawn(
            "py-spy", record, core=session.pinning.load_core, stdout=log, stderr=log
        )
        load = await session.load(args.seconds + 2)
        await wait_exit("py-spy", sampler, within=args.seconds + 30)
    session.fleet.forget(sampler)
    if sampler.returncode != 0 or not output.exists():
        log_text = log_path.read_text(errors="replace")
        raise StartError(f"py-spy exited with {sampler.returncode}:\n{log_text[-2000:]}")
    how = f"sampled by py-spy at {args.rate} Hz for {args.seconds} s" + (
        " (with native frames)" if args.native else ""
    )
    samples = parse_collapsed(output.read_text())
    report = render_samples(samples, args.top, args.rate * args.seconds)
    return session.headline(load, how) + "\n\n" + report


async def measure_only(session: Session) -> str:
    """No profiler: req/s over a few runs, to compare one change with the next in a minute."""
    proxy = await session.start([])
    await session.load(2)
    rates: list[str] = []
    costs: list[str] = []
    for _ in range(3):
        # CPU per request (benchmarks.cpu) moves less than req/s when the host steals time.
        before = cpu.read([proxy.pid])
        load = await session.load(session.args.seconds)
        use = cpu.use_between(before, cpu.read([proxy.pid]), load.requests)
        rates.append(f"{load.requests_per_second:,.0f}")
        costs.append(f"{use.us_per_request:.1f}")
    return (
        f"{session.name} under wrk -t1 -c64 on /{session.args.size}: {', '.join(rates)} req/s, "
        f"{', '.join(costs)} µs CPU per request (3 runs)"
    )


async def profile_with_cprofile(session: Session) -> str:
    args = session.args
    stats = session.prefix / "cprofile.out"
    # cProfile writes its statistics when the script exits, which SIGTERM makes it do. -P keeps
    # the working directory off sys.path, so proxy is imported as the console script would.
    hangup = await session.start([sys.executable, "-P", "-m", "cProfile", "-o", str(stats)])
    warm = await session.load(2)
    load = await session.load(args.seconds)
    hangup.terminate()
    await wait_exit(f"{session.name} under cProfile", hangup, within=60)
    session.fleet.forget(hangup)
    report = render_cprofile(stats, args.top, warm.requests + load.requests)
    return session.headline(load, f"run under cProfile for {args.seconds} s") + "\n\n" + report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--profiler", choices=["py-spy", "cprofile", "none"], default="py-spy")
    parser.add_argument("--size", choices=sorted(nginx.BODY_SIZES), default="1k")
    parser.add_argument(
        "--proxy", choices=["hangup", "bare"], default="hangup", help="bare: the aiohttp ceiling"
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--native", action="store_true", help="py-spy: include C frames")
    args = parser.parse_args(argv)
    py_spy = _py_spy()
    if args.profiler == "py-spy" and py_spy is None:
        _say(f"py-spy not found: {Path(sys.executable).with_name('pip')} install py-spy")
        return 2
    try:
        tools = ensure_tools(_say)
    except ToolError as exc:
        _say(str(exc))
        return 2
    pinning = pin_driver()
    fleet = Fleet(_say, tools.taskset)
    with tempfile.TemporaryDirectory(prefix="hangup-profile-") as tmp:
        prefix = Path(tmp)
        prefix.chmod(0o755)
        session = Session(fleet, prefix, args, tools, pinning)
        if args.profiler == "none":
            work = measure_only(session)
        elif py_spy is not None and args.profiler == "py-spy":
            work = profile_with_py_spy(session, py_spy)
        else:
            work = profile_with_cprofile(session)
        try:
            report = uvloop.run(work)
        except (StartError, WrkError, OSError, subprocess.SubprocessError) as exc:
            _say(f"profiling did not complete: {exc}")
            return 1
        finally:
            fleet.stop_all()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
