"""Slow and stuck clients: slowloris headers, stalled bodies, idle keep-alive, slow readers."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tests.conftest import ProxyFactory
from tests.raw_upstream import (
    RawUpstream,
    ReceivedRequest,
    SlowPathHeld,
    UpstreamConnection,
    response_bytes,
)
from tests.support import (
    LOOPBACK,
    WAIT,
    RawConnection,
    exchange,
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


async def test_a_stalled_small_body_gets_408_and_never_takes_an_upstream_connection(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    """A body within --request-buffer-size is read whole before the upstream is contacted."""
    async with start_proxy(upstream.url, body_timeout=0.3) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("POST", "/up", [("Content-Length", "10")]) + b"12345")
            # Answered at once; aiohttp then lingers (reading and dropping what the client may
            # still send, so the answer is not lost to a reset) before it closes.
            answer = await client.read_response()
            line = await logs.wait_for("request")
        await client.close()
    assert answer.status == 408
    assert answer.header("Connection") == "close"
    assert answer.body == b"408 the request body did not arrive in time\n"
    assert (line["status"], line["reason"]) == (408, "body_timeout")
    assert upstream.connections == []


async def test_a_stalled_large_body_gets_408_and_its_upstream_connection_is_closed(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    """A body larger than the buffer is streamed; the upstream saw part of it, so its connection
    cannot be reused and is closed."""
    declared = 200 * 1024
    async with start_proxy(upstream.url, body_timeout=0.5) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(
                request_bytes("POST", "/up", [("Content-Length", str(declared))]) + b"x" * 1000
            )
            await upstream.wait_until(lambda: len(upstream.connections) == 1)
            await upstream.connections[0].wait_received(1000)
            answer = await client.read_response()
            line = await logs.wait_for("request")
        await upstream.wait_until(lambda: upstream.closed_count() == 1)
        await client.close()
    assert answer.status == 408
    assert (line["status"], line["reason"]) == (408, "body_timeout")
    assert upstream.requests == []  # never arrived whole


async def test_a_body_trickled_past_the_body_timeout_in_total_gets_408(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    """Each byte comes well within the timeout; the body as a whole does not."""
    async with start_proxy(upstream.url, body_timeout=0.5) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("POST", "/up", [("Content-Length", "100")]))

        async def trickle() -> int:
            sent = 0
            with contextlib.suppress(ConnectionError):
                while sent < 100:
                    await client.send(b"x")
                    sent += 1
                    # Not a wait for an event: the slow client itself, one byte every 50 ms.
                    await asyncio.sleep(0.05)
            return sent

        trickler = asyncio.create_task(trickle())
        answer = await client.read_response()
        trickler.cancel()
        await asyncio.wait({trickler})
        await client.close()
    assert answer.status == 408
    assert upstream.connections == []


async def test_sixty_slow_uploaders_leave_the_upstream_slots_to_normal_clients(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    """Issue 12's measurement: 60 clients each trickling a 20 KiB body, 50 upstream slots."""
    async with start_proxy(upstream.url, upstream_max_connections=50) as proxy:
        uploaders = [await RawConnection.open(proxy.address.port) for _ in range(60)]
        for client in uploaders:
            await client.send(request_bytes("POST", "/upload", [("Content-Length", "20480")]))
        for client in uploaders:
            await client.send(b"x")
        statuses = []
        for target in ("/normal", "/second"):
            normal = await RawConnection.open(proxy.address.port)
            await normal.send(request_bytes("GET", target))
            statuses.append((await normal.read_response()).status)
            await normal.close()
        posted = await exchange(
            proxy.address.port, request_bytes("POST", "/form", [("Content-Length", "3")], b"a=1")
        )
        for client in uploaders:
            client.hang_up("rst")
    assert statuses == [200, 200]
    assert posted.status == 200
    assert [request.target for request in upstream.requests] == ["/normal", "/second", "/form"]


EIGHT_MIB = 8 * 1024 * 1024


async def answer_big_to_big(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
    if request.target == "/big":
        return BIG_ANSWER
    return response_bytes(200, b"fast")


BIG_ANSWER = response_bytes(200, b"x" * EIGHT_MIB)


async def test_sixty_stalled_readers_are_cut_at_the_send_timeout_and_free_the_slots(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    """Issue 12's measurement: 60 clients that never read an 8 MiB answer, 50 upstream slots."""
    upstream.answer = answer_big_to_big
    async with start_proxy(upstream.url, upstream_max_connections=50, send_timeout=1.0) as proxy:
        with watch_logs() as logs:
            readers = [
                await RawConnection.open(proxy.address.port, receive_buffer=4096) for _ in range(60)
            ]
            for client in readers:
                await client.send(request_bytes("GET", "/big"))
            # Fifty take the slots and stall; ten are refused at once (503, which they never read).
            await logs.wait_for("request", count=10, status=503)
            cut = await logs.wait_for("request", count=50, outcome="send_timeout")
            await upstream.wait_until(lambda: upstream.closed_count() >= 50)
            normal = await RawConnection.open(proxy.address.port)
            await normal.send(request_bytes("GET", "/normal"))
            served = await normal.read_response()
            await normal.close()
        for client in readers:
            client.hang_up("rst")
    assert served.status == 200
    assert served.body == b"fast"
    assert cut["reason"] == "send_timeout"
    assert len(logs.events("request", outcome="send_timeout")) == 50


async def test_a_write_whose_client_stops_reading_is_cut_and_its_upstream_connection_closed(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    """A write is carried to the end when its client hangs up, but not read out for a client
    that is still connected and reads nothing: that would hold the slot for ever."""
    upstream.answer = answer_big_to_big
    async with start_proxy(upstream.url, send_timeout=0.5) as proxy:
        with watch_logs() as logs:
            client = await RawConnection.open(proxy.address.port, receive_buffer=4096)
            await client.send(request_bytes("POST", "/big", [("Content-Length", "2")], b"{}"))
            line = await logs.wait_for("request")
            await upstream.wait_until(lambda: upstream.closed_count() == 1)
        client.hang_up("rst")
    assert (line["outcome"], line["status"], line["upstream_status"]) == ("send_timeout", 200, 200)


async def test_a_partial_head_pipelined_behind_a_running_request_still_meets_the_header_deadline(
    start_proxy: ProxyFactory,
) -> None:
    """The running request is answered whole; the late head then gets 408 and the connection
    closes, instead of lasting until the keep-alive timeout."""
    held = SlowPathHeld()
    upstream = RawUpstream(held)
    await upstream.start()
    try:
        async with start_proxy(upstream.url, header_timeout=0.3) as proxy:
            client = await RawConnection.open(proxy.address.port)
            with watch_logs() as logs:
                await client.send(request_bytes("GET", "/slow") + b"GET /late HTTP/1.1\r\nX-A: ")
                await upstream.wait_requests(1)
                # Not a wait for an event: the slow client itself, holding its second head past
                # the header deadline while the first request runs.
                await asyncio.sleep(0.6)
                await client.send(b"1\r\nHost: test.local\r\n\r\n")  # late: not excused
                held.release.set()
                first = await client.read_response()
                late = await client.read_response()
                rest = await read_to_close(client)
                rejected = await logs.wait_for("request_rejected")
    finally:
        await upstream.close()
    assert (first.status, first.body) == (200, b"slow answer")
    assert late.status == 408
    assert rest == b""
    assert rejected["reason"] == "header_timeout"
    assert [request.target for request in upstream.requests] == ["/slow"]


async def test_a_head_pipelined_behind_a_running_request_in_time_is_served(
    start_proxy: ProxyFactory,
) -> None:
    held = SlowPathHeld()
    upstream = RawUpstream(held)
    await upstream.start()
    try:
        async with start_proxy(upstream.url, header_timeout=0.5) as proxy:
            client = await RawConnection.open(proxy.address.port)
            await client.send(request_bytes("GET", "/slow") + b"GET /next HTTP/1.1\r\nX-A: ")
            await upstream.wait_requests(1)
            await client.send(b"1\r\nHost: test.local\r\n\r\n")
            held.release.set()
            first = await client.read_response()
            second = await client.read_response()
            await client.close()
    finally:
        await upstream.close()
    assert (first.status, second.status) == (200, 200)
    assert [request.target for request in upstream.requests] == ["/slow", "/next"]


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
