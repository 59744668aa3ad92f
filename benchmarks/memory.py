"""Memory: resident set size idle, and again with many idle keep-alive client connections held.

Each held connection has completed one ``GET /1k`` and then stays open without a second request,
as a browser's or a pooling client's idle connection does. They are opened at most
``CONCURRENCY`` at a time, so the proxy's upstream pool stays near wrk's 64 connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from dataclasses import dataclass
from pathlib import Path

from benchmarks.client import get

CONCURRENCY = 64
OPEN_TIMEOUT = 120.0
"""Seconds to open every held connection, all together."""


@dataclass(frozen=True)
class MemoryReading:
    idle_kib: int
    """RSS after start-up and one request."""
    held_kib: int
    """RSS with ``held`` idle keep-alive client connections open."""
    held: int
    other_kib: int = 0
    """RSS of helper processes not counted above (nginx's master)."""

    @property
    def per_connection_kib(self) -> float:
        return (self.held_kib - self.idle_kib) / self.held if self.held else 0.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def raise_open_file_limit(wanted: int) -> int:
    """Raise this process's (and so its children's) RLIMIT_NOFILE towards ``wanted``; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


async def hold_connections(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` keep-alive connections to ``port``, each after one complete request."""
    gate = asyncio.Semaphore(CONCURRENCY)
    held: list[socket.socket] = []

    async def open_one() -> None:
        async with gate:
            held.append(await _one_request_then_idle(port))

    try:
        async with asyncio.timeout(OPEN_TIMEOUT), asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(open_one())
    except BaseException:
        release(held)
        raise
    return held


def release(held: list[socket.socket]) -> None:
    for sock in held:
        with contextlib.suppress(OSError):
            sock.close()
    held.clear()


async def _one_request_then_idle(port: int) -> socket.socket:
    sock, answer = await get(port, "/1k")
    if answer.status != 200:
        sock.close()
        raise RuntimeError(f"expected 200 for GET /1k on port {port}, got {answer.status}")
    return sock
