"""The benchmark's child processes: pinned to a core, recorded by PID, and all stopped at the end.

Every process is started through ``Fleet.spawn`` (or adopted, for nginx's workers, which its
master forks), and ``Fleet.stop_all`` ends each of them by PID, in reverse order of start. The
driver prints ``started pid N`` and ``stopped pid N`` lines on stderr, which the smoke test checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT = 10.0
"""Seconds a process gets to exit after SIGTERM before it is killed."""


class StartError(Exception):
    """A server did not come up: it exited, or never accepted a connection in time."""


@dataclass(frozen=True)
class Pinning:
    """Which core runs what: load generator and origins on one, the proxy under test on the other.

    ``None`` for both on a machine with a single usable core (nothing is pinned then).
    """

    load_core: int | None
    proxy_core: int | None

    @property
    def both_cores(self) -> tuple[int, ...] | None:
        """Where a proxy with several processes runs: the load core and the proxy core."""
        if self.load_core is None or self.proxy_core is None:
            return None
        return (self.load_core, self.proxy_core)

    def describe(self) -> str:
        if self.load_core is None:
            return "not pinned (fewer than 2 usable cores)"
        return (
            f"wrk, the origins and this driver on CPU {self.load_core}; "
            f"the proxy under test on CPU {self.proxy_core}; hangup `--workers 2` on CPUs "
            f"{self.load_core} and {self.proxy_core} (sharing CPU {self.load_core} with the load)"
        )


def choose_pinning() -> Pinning:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return Pinning(None, None)
    return Pinning(cores[0], cores[1])


def pin_driver() -> Pinning:
    """Choose the pinning, then move this driver onto the load core; call once, before anything
    is started (the choice reads this process's own affinity, which this narrows)."""
    pinning = choose_pinning()
    if pinning.load_core is not None:
        os.sched_setaffinity(0, {pinning.load_core})
    return pinning


def free_port() -> int:
    """A port on loopback that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc, so it works for a process we did not fork)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


class Fleet:
    """Every process the benchmark started, so that all of them can be stopped by PID."""

    def __init__(self, say: Callable[[str], None], taskset: Path | None) -> None:
        self._say = say
        self._taskset = taskset
        self._children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._adopted: list[tuple[str, int]] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        core: int | tuple[int, ...] | None,
        stdout: IO[bytes] | int = subprocess.DEVNULL,
        stderr: IO[bytes] | int = subprocess.DEVNULL,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` pinned to ``core`` (or to each of several cores); taskset execs the
        program, so the PID is its own."""
        command = list(argv)
        if core is not None and self._taskset is not None:
            cores = ",".join(map(str, core)) if isinstance(core, tuple) else str(core)
            command = [str(self._taskset), "-c", cores, *command]
        process = subprocess.Popen(  # noqa: S603 - the benchmark's own programs, no shell
            command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=cwd
        )
        self._children.append((name, process))
        self._say(f"started pid {process.pid} {name}")
        return process

    def adopt(self, name: str, pid: int) -> None:
        """Record a process another child forked (an nginx worker), to check it is gone."""
        self._adopted.append((name, pid))
        self._say(f"started pid {pid} {name}")

    def forget(self, process: subprocess.Popen[bytes]) -> None:
        """Drop a child that has exited by itself and been waited for (a finished wrk run)."""
        self._children = [(n, p) for n, p in self._children if p is not process]
        self._say(f"stopped pid {process.pid} (exited with {process.returncode})")

    def pids(self) -> list[int]:
        """Every process started or adopted and still running."""
        running = [process.pid for _, process in self._children if process.poll() is None]
        return running + [pid for _, pid in self._adopted if is_alive(pid)]

    def stop_all(self) -> None:
        """SIGTERM every child (newest first), wait for each, SIGKILL what is left; then make sure
        adopted processes are gone too."""
        for _, process in reversed(self._children):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for name, process in reversed(self._children):
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(f"pid {process.pid} {name} ignored SIGTERM; killing it")
                process.kill()
                process.wait()
            self._say(f"stopped pid {process.pid} {name}")
        self._children.clear()
        for name, pid in self._adopted:
            _wait_gone(pid, deadline)
            if is_alive(pid):
                self._say(f"pid {pid} {name} outlived its parent; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._say(f"stopped pid {pid} {name}")
        self._adopted.clear()


def _wait_gone(pid: int, deadline: float) -> None:
    while is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


async def wait_exit(name: str, process: subprocess.Popen[bytes], within: float) -> int:
    """Wait, without blocking the event loop, for ``process`` to exit by itself; its status."""
    deadline = time.monotonic() + within
    while (status := process.poll()) is None:
        if time.monotonic() > deadline:
            raise StartError(f"{name} was still running after {within:.0f} s")
        await asyncio.sleep(0.05)
    return status


async def wait_until_listening(
    name: str, process: subprocess.Popen[bytes], port: int, log: Path | None, within: float = 20.0
) -> None:
    """Return once ``port`` accepts a connection; fail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"{name} exited with {process.returncode}{_tail(log)}")
        try:
            _, writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise StartError(f"{name} did not accept connections on port {port} in {within} s{_tail(log)}")


async def wait_until_ready(
    name: str, process: subprocess.Popen[bytes], admin_port: int, log: Path, within: float = 20.0
) -> None:
    """Return once ``GET /readyz`` on the admin port answers 200 (hangup ``--workers``: every
    worker is listening); fail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"{name} exited with {process.returncode}{_tail(log)}")
        if await _readyz_status(admin_port) == 200:
            return
        await asyncio.sleep(0.05)
    raise StartError(f"{name} was not ready on admin port {admin_port} in {within} s{_tail(log)}")


async def _readyz_status(port: int) -> int | None:
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
    except OSError:
        return None
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        status_line = await reader.readline()
    except OSError:
        return None
    finally:
        writer.close()
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").strip().splitlines()[-10:]
    return ("; its last lines:\n" + "\n".join(lines)) if lines else ""
