"""``hangup-proxy --workers 2``: the real console script, a supervisor and its worker processes.

Each test starts the script as a subprocess on 127.0.0.1 with ephemeral ports. Which worker served
a request is read from its canonical line, which carries the worker's ``pid``; the supervisor's
``proxy_listening`` line names every worker's pid once all of them listen.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from benchmarks.processes import is_alive
from proxy.workers.metrics_dir import PREFIX as METRICS_DIR_PREFIX
from proxy.workers.restart_policy import MAX_FAILED_STARTS, restart_delay
from tests.admin_support import Scrape, admin_get, scrape
from tests.raw_upstream import RawUpstream, SlowPathHeld
from tests.support import (
    LOOPBACK,
    WAIT,
    RawConnection,
    ScriptProcess,
    request_bytes,
    running_stack,
)
from tests.support import (
    proxy_argv as admin_proxy_argv,
)

WORKERS = 2


@dataclass
class Supervised:
    """A running supervisor: its process, client and admin ports, and its first workers' pids."""

    process: ScriptProcess
    port: int
    admin: int
    pids: list[int]
    sent: int = 0

    async def get(self, target: str = "/") -> tuple[int, int]:
        """One GET on a new connection (so SO_REUSEPORT may pick either worker): status, pid."""
        self.sent += 1
        request_id = f"w-{self.sent}"
        client = await RawConnection.open(self.port)
        await client.send(request_bytes("GET", target, [("X-Request-ID", request_id)]))
        response = await client.read_response()
        await client.close()
        line = await self.process.wait_for_event("request", request_id=request_id)
        return response.status, int(line["pid"])

    async def until_served_by(self, pids: set[int]) -> list[int]:
        """Send GETs until each of ``pids`` has served one (bounded); the pid of every answer."""
        served: list[int] = []
        async with asyncio.timeout(WAIT):
            while not pids <= set(served):
                status, pid = await self.get()
                assert status == 200
                served.append(pid)
        return served


async def scrape_when(admin: int, name: str, at_least: float, **labels: str) -> Scrape:
    """/metrics once ``name`` has reached ``at_least`` (bounded).

    A worker writes a request's canonical line, then counts it: the line can reach the test a
    moment before the count is in the worker's metrics file.
    """
    async with asyncio.timeout(WAIT):
        while True:
            metrics = await scrape(admin)
            if metrics.value(name, **labels) >= at_least:
                return metrics


def proxy_argv(upstream_url: str, *extra: str) -> list[str]:
    return admin_proxy_argv(upstream_url, "--workers", str(WORKERS), *extra)


async def wait_gone(pids: list[int]) -> None:
    """Wait (bounded) until every pid has exited, on a pidfd, which is readable from then on."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(WAIT):
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # exited and already reaped
            exited: asyncio.Future[None] = loop.create_future()

            def on_exit(future: asyncio.Future[None] = exited) -> None:
                if not future.done():
                    future.set_result(None)

            loop.add_reader(pidfd, on_exit)
            try:
                await exited
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)


@asynccontextmanager
async def supervisor(
    upstream_url: str, *extra: str, env: dict[str, str] | None = None
) -> AsyncIterator[Supervised]:
    """The supervisor with every worker listening; stopped by PID, and no worker may outlive it."""
    process = await ScriptProcess.start(proxy_argv(upstream_url, *extra), env)
    try:
        admin = await process.listening_port("admin_listening")
        ready = await process.wait_for_event("proxy_listening", workers=WORKERS)
        yield Supervised(process, int(ready["port"]), admin, list(ready["pids"]))
    finally:
        await process.stop()
    started = [int(line["pid"]) for line in process.events("worker_started")]
    assert not [pid for pid in started if is_alive(pid)]
    assert not any("Traceback" in line for line in process.raw_lines)


# --- serving -----------------------------------------------------------------------------------


async def test_both_workers_serve_and_admin_metrics_sum_what_each_served(
    upstream: RawUpstream,
) -> None:
    async with supervisor(upstream.url) as running:
        served = await running.until_served_by(set(running.pids))
        metrics = await scrape_when(
            running.admin, "hangup_requests_total", len(served), outcome="completed"
        )
        exposition = (await admin_get(running.admin, "/metrics")).text
        readiness = await admin_get(running.admin, "/readyz")

    assert len(set(running.pids)) == WORKERS
    assert running.process.process.pid not in running.pids
    assert metrics.value("hangup_requests_total", outcome="completed") == len(served)
    assert metrics.value("hangup_request_duration_seconds_count") == len(served)
    assert metrics.value("hangup_workers_listening") == WORKERS
    assert metrics.value("hangup_active_requests") == 0
    # Neither the workers' files nor the supervisor's own counters add _created series (issue 14).
    assert [line for line in exposition.splitlines() if "_created" in line] == []
    assert (readiness.status, readiness.text) == (200, "ready\n")
    # Workers open no admin listener of their own: one admin_listening line, the supervisor's.
    [admin_line] = running.process.events("admin_listening")
    assert "pid" not in admin_line


async def test_the_supervisors_start_up_line_lists_the_policy_its_workers_loaded(
    upstream: RawUpstream,
) -> None:
    policy = ("--cancel-route", "POST /slow=cancel", "--cancel-grace", "0.5")
    async with supervisor(upstream.url, *policy, "--deadline-header", "Request-Timeout") as running:
        supervisor_line = await running.process.wait_for_event("proxy_listening", workers=WORKERS)
        worker_lines = [
            line for line in running.process.events("proxy_listening") if "workers" not in line
        ]

    expected = {
        "cancel_routes": {"route-1": "POST /slow=cancel"},
        "cancel_methods": "GET,HEAD,OPTIONS,TRACE",
        "cancel_grace": 0.5,
        "deadline_header": "Request-Timeout",
    }
    assert {key: supervisor_line[key] for key in expected} == expected
    assert len(worker_lines) == WORKERS
    assert all({key: line[key] for key in expected} == expected for line in worker_lines)


async def test_a_worker_killed_with_sigkill_is_restarted_and_serving_continues(
    upstream: RawUpstream,
) -> None:
    async with supervisor(upstream.url) as running:
        victim, survivor = running.pids
        os.kill(victim, signal.SIGKILL)
        exited = await running.process.wait_for_event("worker_exited", pid=victim)
        started = await running.process.wait_for(
            lambda line: line.get("event") == "worker_started" and line["pid"] not in running.pids
        )
        replacement = int(started["pid"])
        await running.process.wait_for_event("proxy_listening", pid=replacement)
        served = await running.until_served_by({replacement, survivor})
        metrics = await scrape_when(
            running.admin, "hangup_requests_total", len(served), outcome="completed"
        )

    assert (exited["signal"], exited["exit_status"], exited["listening"]) == ("SIGKILL", -9, True)
    assert started["worker"] == exited["worker"]
    assert victim not in served
    assert metrics.value("hangup_worker_restarts_total") == 1
    assert metrics.value("hangup_requests_total", outcome="completed") == len(served)


async def test_a_hang_up_through_a_worker_cancels_the_backend_handler() -> None:
    proxy_args = ("--workers", str(WORKERS), "--admin", f"{LOOPBACK}:0")
    async with running_stack(proxy_args=proxy_args) as stack:
        ready = await stack.proxy.wait_for_event("proxy_listening", workers=WORKERS)
        admin = await stack.proxy.listening_port("admin_listening")
        client = await RawConnection.open(stack.port)
        await client.send(request_bytes("GET", "/slow?seconds=30", [("X-Request-ID", "w-hang")]))
        await stack.backend.wait_for_event("slow_started", request_id="w-hang")
        client.hang_up("rst")

        cancelled = await stack.backend.wait_for_event("handler_cancelled", request_id="w-hang")
        line = await stack.proxy.wait_for_event("request", request_id="w-hang")
        metrics = await scrape_when(admin, "hangup_upstream_cancellations_total", 1)

    assert cancelled["level"] == "info"
    assert (line["status"], line["outcome"], line["upstream_closed"]) == (
        499,
        "client_hangup",
        True,
    )
    assert line["pid"] in ready["pids"]
    assert metrics.value("hangup_client_disconnects_total", phase="awaiting_upstream_headers") == 1


# --- stopping ----------------------------------------------------------------------------------


async def test_sigterm_drains_an_in_flight_request_on_a_worker_and_exits_0_leaving_no_worker(
    upstream: RawUpstream,
) -> None:
    answer = SlowPathHeld()
    upstream.answer = answer
    async with supervisor(upstream.url, "--drain-timeout", "20") as running:
        slow = await RawConnection.open(running.port)
        await slow.send(request_bytes("GET", "/slow", [("X-Request-ID", "w-slow")]))
        await upstream.wait_until(lambda: any(r.target == "/slow" for r in upstream.requests))
        running.process.send_signal(signal.SIGTERM)
        await running.process.wait_for_event("proxy_draining")
        readiness = await admin_get(running.admin, "/readyz")

        answer.release.set()
        response = await slow.read_response()
        await slow.close()
        code = await running.process.wait_exit()

    assert (readiness.status, readiness.text) == (503, "not ready: draining\n")
    assert (response.status, response.body) == (200, b"slow answer")
    assert code == 0
    line = running.process.events("request")[-1]
    assert (line["request_id"], line["outcome"]) == ("w-slow", "completed")
    stopped = running.process.events("worker_stopped")
    assert sorted(line["pid"] for line in stopped) == sorted(running.pids)
    assert all(line["exit_status"] == 0 for line in stopped)
    assert running.process.events("worker_exited") == []  # a drain is not a crash: no restart


async def test_a_second_signal_makes_every_worker_and_the_supervisor_exit_at_once_with_1(
    upstream: RawUpstream,
) -> None:
    upstream.answer = SlowPathHeld()  # never released
    async with supervisor(upstream.url, "--drain-timeout", "20") as running:
        slow = await RawConnection.open(running.port)
        await slow.send(request_bytes("GET", "/slow"))
        await upstream.wait_requests(1)
        running.process.send_signal(signal.SIGTERM)
        await running.process.wait_for_event("proxy_draining")
        running.process.send_signal(signal.SIGTERM)
        code = await running.process.wait_exit()
        await slow.close()

    assert code == 1
    exits = [line["exit_status"] for line in running.process.events("worker_stopped")]
    assert exits.count(1) >= 1  # the worker holding the request exited at once, with 1
    assert running.process.events("proxy_exit_now")
    assert running.process.events("worker_killed") == []  # at once: not killed after a bound


async def test_workers_drain_and_exit_by_themselves_when_their_supervisor_is_killed(
    upstream: RawUpstream, tmp_path: Path
) -> None:
    # The metrics directory of a SIGKILLed supervisor stays until the next start: in tmp_path.
    async with supervisor(upstream.url, env={"TMPDIR": str(tmp_path)}) as running:
        os.kill(running.process.process.pid, signal.SIGKILL)
        code = await running.process.wait_exit()
        await wait_gone(running.pids)  # no longer the supervisor's children: nobody waits for them

    assert code == -signal.SIGKILL
    gone = running.process.events("supervisor_gone")
    assert sorted(line["pid"] for line in gone) == sorted(running.pids)
    stopped = [line["pid"] for line in running.process.events("proxy_stopped") if "pid" in line]
    assert sorted(stopped) == sorted(running.pids)


# --- the metrics directory --------------------------------------------------------------------


def metrics_dirs(tmpdir: Path) -> list[Path]:
    return sorted(tmpdir.glob(f"{METRICS_DIR_PREFIX}*"))


async def test_the_metrics_directory_a_sigkilled_supervisor_left_is_removed_at_the_next_start(
    upstream: RawUpstream, tmp_path: Path
) -> None:
    env = {"TMPDIR": str(tmp_path)}
    async with supervisor(upstream.url, env=env) as killed:
        os.kill(killed.process.process.pid, signal.SIGKILL)
        await killed.process.wait_exit()
        await wait_gone(killed.pids)  # they drain by themselves: nobody removes the files now
    [left] = metrics_dirs(tmp_path)
    assert any(left.glob("*.db"))

    async with supervisor(upstream.url, env=env) as running:
        await running.until_served_by(set(running.pids))
        await scrape_when(running.admin, "hangup_requests_total", 1, outcome="completed")
        [current] = metrics_dirs(tmp_path)
        in_use = any(current.glob("*.db"))

    assert current != left
    assert in_use
    [removed] = running.process.events("metrics_dir_removed")
    assert (removed["level"], removed["path"]) == ("info", str(left))
    assert metrics_dirs(tmp_path) == []  # the second one exited cleanly and removed its own


async def test_a_live_supervisors_metrics_directory_is_left_alone_by_one_starting_beside_it(
    upstream: RawUpstream, tmp_path: Path
) -> None:
    env = {"TMPDIR": str(tmp_path)}
    async with supervisor(upstream.url, env=env) as first:
        [first_dir] = metrics_dirs(tmp_path)
        async with supervisor(upstream.url, env=env) as second:
            both = metrics_dirs(tmp_path)
            # The first one's files are still there and still summed on its /metrics.
            served = await first.until_served_by(set(first.pids))
            metrics = await scrape_when(
                first.admin, "hangup_requests_total", len(served), outcome="completed"
            )

    assert first_dir in both
    assert len(both) == 2
    assert second.process.events("metrics_dir_removed") == []
    assert metrics.value("hangup_requests_total", outcome="completed") == len(served)


# --- failing to start -------------------------------------------------------------------------


@pytest.fixture
def failing_worker_site(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A ``sitecustomize`` that ends any *worker* process with status 3 at interpreter start-up
    while ``armed`` exists: the supervisor, started the same way, is untouched."""
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""\
            import os
            if "HANGUP_WORKER_ASSIGNMENT" in os.environ and os.path.exists({str(tmp_path)!r} + "/armed"):
                os._exit(3)
            """  # noqa: E501
        )
    )
    inherited = os.environ.get("PYTHONPATH")
    path = str(tmp_path) if not inherited else f"{tmp_path}{os.pathsep}{inherited}"
    return {"PYTHONPATH": path}, tmp_path / "armed"


def run_to_exit(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("HANGUP")}
    return subprocess.run(
        argv,
        env={**inherited, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def test_workers_that_cannot_start_end_the_supervisor_with_one_error_line(
    failing_worker_site: tuple[dict[str, str], Path],
) -> None:
    env, armed = failing_worker_site
    armed.touch()

    finished = run_to_exit(proxy_argv(f"http://{LOOPBACK}:9"), env)

    assert finished.returncode == 1
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith("hangup-proxy: error: worker ")
    assert lines[0].endswith("exited with 3 before it was listening")
    # A worker that exits before it listens is reported by its exit status, never as a time-out.
    assert "worker_start_timeout" not in finished.stdout


async def test_a_slot_whose_restarts_keep_failing_backs_off_then_the_supervisor_gives_up(
    upstream: RawUpstream, failing_worker_site: tuple[dict[str, str], Path]
) -> None:
    env, armed = failing_worker_site
    process = await ScriptProcess.start(proxy_argv(upstream.url), env)
    try:
        ready = await process.wait_for_event("proxy_listening", workers=WORKERS)
        armed.touch()
        os.kill(ready["pids"][0], signal.SIGKILL)
        code = await process.wait_exit()
    finally:
        await process.stop()

    assert code == 1
    assert process.events("workers_failed")
    slot = process.events("worker_exited")[0]["worker"]
    failed = [line for line in process.events("worker_exited") if line["worker"] == slot][1:]
    starts = [line for line in process.events("worker_started") if line["worker"] == slot][1:]
    assert len(failed) == MAX_FAILED_STARTS
    assert all(line["exit_status"] == 3 and not line["listening"] for line in failed)
    assert not process.events("worker_start_timeout")
    # Each restart waited at least its back-off after the exit before it (no hot loop).
    exits = [process.events("worker_exited")[0], *failed]
    for number, (exit_line, start_line) in enumerate(zip(exits, starts, strict=False)):
        waited = _at(start_line) - _at(exit_line)
        assert waited >= restart_delay(number) - 0.01, (number, waited)
    assert not [pid for pid in map(int, (ln["pid"] for ln in starts)) if is_alive(pid)]


def _at(line: dict[str, object]) -> float:
    return datetime.fromisoformat(str(line["timestamp"])).timestamp()


def test_a_taken_listen_address_is_one_error_line_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = proxy_argv(f"http://{LOOPBACK}:9")
        argv[argv.index(f"{LOOPBACK}:0")] = f"{LOOPBACK}:{port}"  # --listen, not --admin
        finished = run_to_exit(argv, {})

    assert finished.returncode == 1
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith(f"hangup-proxy: error: cannot listen on {LOOPBACK}:{port}: ")
    assert "worker_started" not in finished.stdout
