"""Thousands of hang-ups leave nothing behind in the real ``hangup-proxy`` process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.raw_upstream import RawUpstream, ReceivedRequest, UpstreamConnection, response_bytes
from tests.support import (
    LOOPBACK,
    RawConnection,
    ScriptProcess,
    request_bytes,
    running_script,
    script_path,
)

HANGUPS = 2000
CONCURRENCY = 24


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


async def hang_up_once(port: int, upstream: RawUpstream, number: int) -> None:
    client = await RawConnection.open(port)
    await client.send(request_bytes("GET", f"/slow/{number}", [("X-Request-ID", f"leak-{number}")]))
    await upstream.wait_until(
        lambda: any(request.target == f"/slow/{number}" for request in upstream.requests)
    )
    client.hang_up("rst" if number % 2 else "fin")


async def hang_up_many(port: int, upstream: RawUpstream, start: int, count: int) -> None:
    queue = iter(range(start, start + count))

    async def worker() -> None:
        for number in queue:
            await hang_up_once(port, upstream, number)

    async with asyncio.TaskGroup() as group:
        for _ in range(CONCURRENCY):
            group.create_task(worker())


async def wait_quiet(proxy: ScriptProcess, upstream: RawUpstream, requests: int) -> None:
    """Every request logged and every upstream connection closed."""
    await proxy.wait_for(lambda line: len(proxy.events("request")) >= requests, timeout=60)
    await upstream.wait_until(lambda: upstream.closed_count() == len(upstream.connections), 30)


async def test_thousands_of_hang_ups_leak_no_descriptors_connections_or_memory() -> None:
    never = asyncio.Event()

    async def slow(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        if request.target != "/after":
            await never.wait()
        return response_bytes(200, b"still serving")

    upstream = RawUpstream(slow)
    await upstream.start()
    argv = [
        script_path("hangup-proxy"),
        "--listen",
        f"{LOOPBACK}:0",
        "--upstream",
        upstream.url,
    ]
    try:
        async with running_script(argv, "proxy_listening") as (proxy, port):
            pid = proxy.process.pid
            warm_up = 300
            await hang_up_many(port, upstream, 0, warm_up)
            await wait_quiet(proxy, upstream, warm_up)
            fds_before, rss_before = open_fds(pid), resident_kib(pid)

            await hang_up_many(port, upstream, warm_up, HANGUPS)
            await wait_quiet(proxy, upstream, warm_up + HANGUPS)
            fds_after, rss_after = open_fds(pid), resident_kib(pid)

            lines = proxy.events("request")
            assert len(lines) == warm_up + HANGUPS
            assert {line["outcome"] for line in lines} == {"client_hangup"}
            assert all(line["upstream_closed"] for line in lines)
            assert len(upstream.connections) == warm_up + HANGUPS
            assert fds_after <= fds_before
            assert rss_after <= rss_before * 1.10, (rss_before, rss_after)
            assert not any("Traceback" in line for line in proxy.raw_lines)

            # And it still serves: a normal request gets its answer.
            client = await RawConnection.open(port)
            await client.send(request_bytes("GET", "/after"))
            response = await client.read_response()
            await client.close()
            assert (response.status, response.body) == (200, b"still serving")
    finally:
        await upstream.close()
