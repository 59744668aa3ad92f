"""``--workers N``: one supervisor process and N worker processes sharing the listen port.

Theory of operation
-------------------
The supervisor serves no client traffic. It binds the listen address once, starts N workers that
each run the ordinary proxy (``proxy.workers.worker``) on that address with SO_REUSEPORT, so the
kernel spreads new connections over their listeners, and then only watches them.

How workers start: a re-exec, ``python -P -c 'from proxy.cli import main; ...'``
(``WORKER_CODE``) with the supervisor's own flags and environment plus
``HANGUP_WORKER_ASSIGNMENT``. Not a fork: the supervisor runs an event loop (the admin listener,
signals, its children), and a restart happens long after that loop exists; a child forked from it
would inherit the loop's epoll and signal descriptors and any executor threads, which asyncio
does not support. "Fork before any loop exists" covers only the first generation.
A re-exec gives every worker, restarted ones too, a fresh interpreter that starts exactly like a
single-process hangup, for about 0.4 s of imports. ``-P`` keeps a ``proxy/`` directory that happens
to be the current directory out of the worker's imports, as it is out of the console script's.
``-c`` with the console script's own import, not ``-m proxy``: ``-m proxy`` runs whatever
``proxy/__main__.py`` is on disk, and proxy.py, installed into the same environment, overwrites it
with its own (``proxy.observability.provenance``); ``proxy.cli`` is a module only hangup ships, and
its ``main`` first checks that the package is hangup's, in the worker as in the supervisor. Not
``-m proxy.workers.worker`` either: that would load ``proxy/workers/worker.py`` twice, as
``__main__`` and as the ``proxy.workers.worker`` that ``proxy.cli`` imports.

The listen address: the supervisor binds (never listens on) a SO_REUSEPORT socket on it first.
That resolves port 0 to the one port all workers share, fails once with the usual one-line error
when the address is taken, and holds the port while every worker restarts. Each listener has its
own accept queue (the price of SO_REUSEPORT, as with nginx's ``reuseport``): connections still
queued at a worker that dies are reset.

Signals: workers run in a session of their own, so a terminal's Ctrl-C reaches the supervisor
only. SIGTERM or SIGINT makes it forward SIGTERM to every worker, which drains as a single process
does (``--drain-timeout``); /readyz turns 503 at once; the supervisor exits 0 once every worker
has exited 0. A second signal is forwarded too, as SIGINT (workers exit at once with status 1),
and the supervisor exits 1. A worker still running ``EXIT_MARGIN`` seconds past the drain timeout is
killed. Every process is signalled by its PID. A worker whose supervisor vanishes (even SIGKILLed)
sees its channel close and drains by itself.

Restarts: a worker that exits while the supervisor is not draining is logged (``worker_exited``,
with pid and exit status) and started again (``worker_started``) after a delay that grows while
starts keep failing. A worker that exits before it listens is reported with its exit status (its
channel closes first, and the supervisor waits for the exit rather than calling it a time-out);
only one still running after ``START_TIMEOUT`` is ``worker_start_timeout``. A first-generation
worker that cannot start, or a slot that fails to start ``MAX_FAILED_STARTS`` times in a row, ends
the supervisor with one error line (``proxy.workers.restart_policy``).

Admin and metrics: the supervisor alone opens ``--admin``. /healthz and /livez answer while its
loop does. /readyz is 200 only while every worker is listening (and, with
``--ready-check-upstream``, the upstream accepts connections), 503 while a worker is being
restarted and from the first moment of a drain. /metrics sums every worker's metrics with
prometheus-client's multiprocess mode and adds the supervisor's own
(``proxy.workers.worker_metrics``). The workers' files live in a directory the supervisor locks for
its life; at start-up it removes those of supervisors that were killed before they could
(``proxy.workers.metrics_dir``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from proxy.observability.admin import Readiness, start_admin
from proxy.observability.metrics import MULTIPROC_DIR_ENV
from proxy.serving.server import ListenError, run_on_uvloop
from proxy.settings.config import ProxyConfig
from proxy.wire.address import HostPort
from proxy.workers.metrics_dir import MetricsDir, remove_abandoned
from proxy.workers.reservation import reserve_address
from proxy.workers.restart_policy import restart_delay, should_give_up
from proxy.workers.worker import ASSIGNMENT_ENV, LISTENING, WorkerAssignment
from proxy.workers.worker_metrics import SupervisorMetrics

log = structlog.get_logger("hangup.proxy")

START_TIMEOUT = 30.0
"""Seconds a worker has to report its listener up before it is killed as a failed start."""

EXIT_MARGIN = 5.0
"""Seconds past ``--drain-timeout`` a draining worker gets to exit before it is killed."""

EXIT_NOW_MARGIN = 2.0
"""Seconds a worker gets to exit after a second signal before it is killed."""


class WorkersError(Exception):
    """Workers could not be started, or kept running: the supervisor gave up."""


@dataclass
class WorkersReadiness(Readiness):
    """/readyz of a supervisor: also 503 until every worker is listening."""

    workers: int = 1
    listening: int = 0

    async def problem(self) -> str | None:
        if not self.draining and self.listening < self.workers:
            return f"{self.listening} of {self.workers} workers listening"
        return await super().problem()


@dataclass
class WorkerProcess:
    """One running worker and the supervisor's end of its channel."""

    slot: int
    process: asyncio.subprocess.Process
    channel: socket.socket
    listening: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def send_signal(self, signum: int) -> None:
        """Signal this worker by PID, unless it has already been reaped."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def reports_listening(self) -> bool:
        """True once the worker says its listener is up; False if the channel closed first."""
        loop = asyncio.get_running_loop()
        received = b""
        while received != LISTENING:
            try:
                chunk = await loop.sock_recv(self.channel, len(LISTENING) - len(received))
            except OSError:
                return False
            if not chunk:
                return False
            received += chunk
        return True


def describe_exit(returncode: int) -> dict[str, int | str]:
    """Log fields for how a process ended: its exit status, or the signal that killed it."""
    if returncode < 0:
        return {"exit_status": returncode, "signal": signal.Signals(-returncode).name}
    return {"exit_status": returncode}


WORKER_CODE = "from proxy.cli import main; raise SystemExit(main())"
"""What a worker runs: what the ``hangup-proxy`` console script runs (see the module docstring)."""


def worker_command(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-P", "-c", WORKER_CODE, *argv]


class Supervisor:
    """Keeps ``config.workers`` workers listening on ``address`` until told to stop."""

    def __init__(
        self, config: ProxyConfig, argv: Sequence[str], address: HostPort, metrics_dir: Path
    ) -> None:
        # --- configuration
        self.config = config
        self.argv = list(argv)
        self.address = address
        self.metrics_dir = metrics_dir
        # --- what the admin listener reports
        self.readiness = WorkersReadiness(
            config.upstream, check_upstream=config.ready_check_upstream, workers=config.workers
        )
        self.metrics = SupervisorMetrics(metrics_dir)
        # --- the workers' lifetime
        self.workers: dict[int, WorkerProcess] = {}
        self.all_started = asyncio.Event()
        self.draining = asyncio.Event()
        self.signals = 0
        self.failure: str | None = None
        self.exit_status = 0
        self._drain_bound: asyncio.Timeout | None = None

    async def run(self) -> int:
        """Start the workers, keep them running until a signal, drain; the exit status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        admin_runner = None
        if self.config.admin is not None:
            try:
                admin_runner, admin = await start_admin(
                    self.config.admin, self.readiness, self.metrics.registry
                )
            except OSError as exc:
                raise ListenError(self.config.admin, exc) from exc
            log.info("admin_listening", host=admin.host, port=admin.port)
        bound = asyncio.create_task(self._bound_the_drain())
        try:
            async with asyncio.TaskGroup() as group:
                for slot in range(self.config.workers):
                    group.create_task(self._keep_slot(slot))
        finally:
            bound.cancel()
            await asyncio.gather(bound, return_exceptions=True)
            # Only after an unexpected error is a worker left here: never leave one behind.
            for worker in self.workers.values():
                worker.send_signal(signal.SIGKILL)
            if admin_runner is not None:
                await admin_runner.cleanup()
        if self.failure is not None:
            raise WorkersError(self.failure)
        log.info("proxy_stopped", exit_status=self.exit_status)
        return self.exit_status

    # --- one slot: start, watch, restart ---------------------------------------------------------

    async def _keep_slot(self, slot: int) -> None:
        failed_starts = 0
        while not self.draining.is_set():
            failed_start = await self._run_one(slot)
            if self.draining.is_set():
                return
            failed_starts = 0 if failed_start is None else failed_starts + 1
            if should_give_up(failed_starts, all_started_once=self.all_started.is_set()):
                self._give_up(f"worker {slot} {failed_start}")
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(restart_delay(failed_starts)):
                    await self.draining.wait()
            if not self.draining.is_set():
                self.metrics.worker_restarts.inc()

    async def _run_one(self, slot: int) -> str | None:
        """Start a worker in ``slot`` and wait until it exits; how its start failed, if it did."""
        try:
            worker = await self._start(slot)
        except OSError as exc:  # e.g. EAGAIN from fork under a process limit
            problem = f"could not be started: {exc}"
        else:
            return await self._watch(worker)
        log.error("worker_start_failed", worker=slot, error=problem)
        return problem

    async def _watch(self, worker: WorkerProcess) -> str | None:
        """Wait for the started ``worker`` to listen, then to exit; how its start failed, if so."""
        slot = worker.slot
        listening = await self._wait_listening(worker)
        returncode = await worker.process.wait()
        self._forget(worker)
        how = describe_exit(returncode)
        if self.draining.is_set():
            log.info("worker_stopped", worker=slot, pid=worker.pid, **how)
            if listening and returncode != 0:
                self.exit_status = 1
            return None
        log.warning("worker_exited", worker=slot, pid=worker.pid, listening=listening, **how)
        if listening:
            return None
        ended = f"was killed by {how['signal']}" if "signal" in how else f"exited with {returncode}"
        return f"(pid {worker.pid}) {ended} before it was listening"

    async def _start(self, slot: int) -> WorkerProcess:
        ours, theirs = socket.socketpair()
        try:
            assignment = WorkerAssignment(slot, self.address, theirs.fileno())
            env = {
                **os.environ,
                ASSIGNMENT_ENV: assignment.encode(),
                MULTIPROC_DIR_ENV: str(self.metrics_dir),
            }
            process = await asyncio.create_subprocess_exec(
                *worker_command(self.argv),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                # Out of the terminal's process group: Ctrl-C reaches the supervisor only, and it
                # forwards one SIGTERM (two would mean "exit at once" to a worker).
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = WorkerProcess(slot, process, ours)
        self.workers[slot] = worker
        log.info("worker_started", worker=slot, pid=worker.pid)
        if self.draining.is_set():
            worker.send_signal(signal.SIGTERM)  # the drain began while this one was being started
        return worker

    async def _wait_listening(self, worker: WorkerProcess) -> bool:
        listening: bool | None = None  # None: not told either way within START_TIMEOUT
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_TIMEOUT):
                listening = await worker.reports_listening()
        if listening is None:
            log.error("worker_start_timeout", worker=worker.slot, pid=worker.pid)
            worker.send_signal(signal.SIGKILL)
            return False
        if listening:
            worker.listening = True
            self._count_listening()
            return True
        # The channel closed before the worker said it listens: the worker is exiting, and its
        # exit status, which the child watcher may not have reaped yet, is what _watch reports.
        # Bounded all the same: one that closed its end and lives on is killed.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_MARGIN):
                await worker.process.wait()
        if worker.process.returncode is None:
            log.error("worker_channel_closed", worker=worker.slot, pid=worker.pid)
            worker.send_signal(signal.SIGKILL)
        return False

    def _forget(self, worker: WorkerProcess) -> None:
        if self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
        worker.channel.close()
        self.metrics.worker_exited(worker.pid)
        self._count_listening()

    def _count_listening(self) -> None:
        listening = sum(worker.listening for worker in self.workers.values())
        self.readiness.listening = listening
        self.metrics.workers_listening.set(listening)
        if listening == self.config.workers and not self.all_started.is_set():
            self.all_started.set()
            log.info(
                "proxy_listening",
                host=self.address.host,
                port=self.address.port,
                workers=self.config.workers,
                pids=sorted(worker.pid for worker in self.workers.values()),
                upstream=self.config.upstream.describe(),
                **self.config.policy_fields,
            )

    # --- stopping ------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self.signals += 1
        if self.signals == 1:
            log.info("signal_received", signal=name)
            self._drain()
            return
        log.warning("proxy_exit_now", signal=name)
        self.exit_status = 1
        for worker in self.workers.values():
            # SIGINT, not SIGTERM: a second SIGTERM still pending with the first would be merged
            # into one by the kernel, and the worker would only drain. It takes either as its
            # second signal.
            worker.send_signal(signal.SIGINT)
        if self._drain_bound is not None:
            deadline = asyncio.get_running_loop().time() + EXIT_NOW_MARGIN
            self._drain_bound.reschedule(min(deadline, self._drain_bound.when() or deadline))

    def _give_up(self, failure: str) -> None:
        log.error("workers_failed", error=failure)
        if self.failure is None:
            self.failure = failure
        self._drain()

    def _drain(self) -> None:
        if self.draining.is_set():
            return
        log.info("proxy_draining", timeout=self.config.drain_timeout)
        self.readiness.draining = True
        self.draining.set()
        for worker in self.workers.values():
            worker.send_signal(signal.SIGTERM)

    async def _bound_the_drain(self) -> None:
        """Kill what still runs ``EXIT_MARGIN`` seconds past the drain timeout."""
        await self.draining.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.drain_timeout + EXIT_MARGIN) as bound:
                self._drain_bound = bound
                await asyncio.Event().wait()  # until the bound, or cancelled once all have exited
        for worker in self.workers.values():
            log.error("worker_killed", worker=worker.slot, pid=worker.pid)
            worker.send_signal(signal.SIGKILL)
            self.exit_status = 1


async def supervise(config: ProxyConfig, argv: Sequence[str]) -> int:
    """Run the supervisor to its end; the exit status (``WorkersError`` when it gave up)."""
    reservation, address = reserve_address(config.listen)
    with reservation:
        remove_abandoned()  # left by supervisors that were SIGKILLed (proxy.workers.metrics_dir)
        try:
            metrics_dir = MetricsDir.create()
        except OSError as exc:  # e.g. a read-only root file system with no writable /tmp
            raise WorkersError(
                f"cannot create the workers' metrics directory (set TMPDIR to a writable one): "
                f"{exc}"
            ) from exc
        with metrics_dir:
            return await Supervisor(config, argv, address, metrics_dir.path).run()


def run_supervisor(config: ProxyConfig, argv: Sequence[str]) -> int:
    """Blocking entry point, on uvloop like the proxy itself."""
    return run_on_uvloop(supervise(config, argv))
