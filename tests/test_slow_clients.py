"""Slow and stuck clients: slowloris headers, stalled bodies, idle keep-alive, slow readers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream
from tests.support import (
    LOOPBACK,
    WAIT,
    RawConnection,
    request_bytes,
    running_script,
    script_path,
    watch_logs,
)


async def read_to_close(client: RawConnection) -> bytes:
    """Everything the proxy sends until it closes the connection; then close our side too."""
    async with asyncio.timeout(WAIT):
        data = await client.reader.read()
    await client.close()
    return data


async def test_slowloris_clients_get_408_while_others_are_served(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url, header_timeout=0.5) as proxy:
        dribblers = [await RawConnection.open(proxy.address.port) for _ in range(50)]
        with watch_logs() as logs:
            for client in dribblers:
                await client.send(b"GET / HTTP/1.1\r\nHost: test.local\r\nX-Slow: ")
            # Meanwhile an ordinary client is served at once.
            normal = await RawConnection.open(proxy.address.port)
            await normal.send(request_bytes("GET", "/normal"))
            assert (await normal.read_response()).status == 200
            await normal.close()
            answers = await asyncio.gather(*(read_to_close(client) for client in dribblers))
            rejected = await logs.wait_for("request_rejected", count=50, reason="header_timeout")
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
    assert rejected["status"] == 408
    assert [request.target for request in upstream.requests] == ["/normal"]


async def test_a_silent_connection_is_closed_after_the_header_timeout(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url, header_timeout=0.3) as proxy:
        client = await RawConnection.open(proxy.address.port)
        assert await read_to_close(client) == b""


async def test_a_stalled_body_gets_408_and_its_upstream_connection_is_closed(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url, body_timeout=0.3) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("POST", "/up", [("Content-Length", "10")]) + b"12345")
            # Answered at once; aiohttp then lingers (reading and dropping what the client may
            # still send, so the answer is not lost to a reset) before it closes.
            answer = await client.read_response()
            line = await logs.wait_for("request")
        await upstream.wait_until(lambda: upstream.closed_count() == 1)
        await client.close()
    assert answer.status == 408
    assert answer.header("Connection") == "close"
    assert answer.body == b"408 the request body stalled\n"
    assert (line["status"], line["reason"]) == (408, "body_timeout")
    assert upstream.requests == []  # never arrived whole


async def test_idle_keep_alive_client_connections_are_closed(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url, client_keepalive_timeout=0.3) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/"))
        assert (await client.read_response()).status == 200
        assert await read_to_close(client) == b""


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_client_that_does_not_read_does_not_make_the_proxy_buffer() -> None:
    """The upstream offers 256 MiB; the client reads nothing; the proxy's memory stays flat."""
    size = 256 * 1024 * 1024
    block = b"x" * (256 * 1024)
    sent = 0
    blocked = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        try:
            while sent < size:
                writer.write(block)
                sent += len(block)
                try:
                    # The upstream itself notices back-pressure: a write that cannot drain.
                    async with asyncio.timeout(0.5):
                        await writer.drain()
                except TimeoutError:
                    blocked.set()
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    origin = await asyncio.start_server(endless, LOOPBACK, 0)
    origin_port = origin.sockets[0].getsockname()[1]
    argv = [
        script_path("hangup-proxy"),
        "--listen",
        f"{LOOPBACK}:0",
        "--upstream",
        f"http://{LOOPBACK}:{origin_port}",
    ]
    try:
        async with running_script(argv, "proxy_listening") as (proxy, port):
            baseline = resident_kib(proxy.process.pid)
            client = await RawConnection.open(port)
            # A small receive buffer, and no reads: a stalled reader.
            await client.send(request_bytes("GET", "/big"))
            async with asyncio.timeout(30):
                await blocked.wait()
            stalled = resident_kib(proxy.process.pid)
            client.hang_up("rst")
    finally:
        origin.close()
        await origin.wait_closed()
    assert sent < 64 * 1024 * 1024, sent
    assert stalled - baseline < 24 * 1024, (baseline, stalled)
