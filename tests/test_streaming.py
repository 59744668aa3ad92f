"""Streaming responses: each chunk reaches the client as it arrives; a hang-up stops the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK,
    WAIT,
    RawConnection,
    request_bytes,
    running_stack,
)

EVENTS = 5


class SteppedOrigin:
    """An origin that sends one event, then waits until the test has seen it before the next.

    If the proxy held an event back (coalescing, buffering the body), the test's wait for it
    would time out: each event must reach the client before the next one is even produced.
    """

    def __init__(self, head: bytes, chunked: bool) -> None:
        self.head = head
        self.chunked = chunked
        self.seen = asyncio.Queue[int]()
        self.closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(self.head)
        try:
            for number in range(EVENTS):
                event = f"data: token {number}\n\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(event), event) if self.chunked else event)
                await writer.drain()
                async with asyncio.timeout(WAIT):
                    assert await self.seen.get() == number
            writer.write(b"0\r\n\r\n" if self.chunked else b"")
            await writer.drain()
        finally:
            writer.close()
            self.closed.set()


@pytest.fixture(
    params=[
        pytest.param(True, id="chunked-event-stream"),
        pytest.param(False, id="close-delimited-unknown-length"),
    ]
)
async def stepped(request: pytest.FixtureRequest) -> AsyncIterator[tuple[SteppedOrigin, str]]:
    chunked: bool = request.param
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + framing + b"\r\n"
    origin = SteppedOrigin(head, chunked)
    server = await asyncio.start_server(origin.serve, LOOPBACK, 0)
    yield origin, f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_each_event_reaches_the_client_before_the_next_is_produced(
    stepped: tuple[SteppedOrigin, str], start_proxy: ProxyFactory
) -> None:
    origin, url = stepped
    async with start_proxy(url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/events"))
        async with asyncio.timeout(WAIT):
            head = await client.reader.readuntil(b"\r\n\r\n")
            for number in range(EVENTS):
                await client.reader.readuntil(f"data: token {number}\n\n".encode())
                origin.seen.put_nowait(number)
            await origin.closed.wait()
        await client.close()
    assert b"text/event-stream" in head


async def test_hanging_up_on_a_stream_cancels_the_backend_generator() -> None:
    async with running_stack() as stack:
        client = await RawConnection.open(stack.port)
        await client.send(
            request_bytes("GET", "/stream?events=1000&interval=0.1", [("X-Request-ID", "sse-1")])
        )
        async with asyncio.timeout(WAIT):
            await client.reader.readuntil(b"data: token 1\n\n")
        client.hang_up("fin")
        await stack.backend.wait_for_event("stream_cancelled", request_id="sse-1")
        line = await stack.proxy.wait_for_event("request", request_id="sse-1")
    assert (line["outcome"], line["phase"], line["upstream_closed"]) == (
        "client_hangup",
        "streaming_response",
        True,
    )
    assert stack.backend.events("stream_completed") == []


async def test_headers_reach_the_client_before_a_late_body(start_proxy: ProxyFactory) -> None:
    """Headers are held back only when body bytes came with them: a long poll sees its headers."""
    client_saw_head = asyncio.Event()

    async def long_poll(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(WAIT):
            await client_saw_head.wait()
        writer.write(b"late")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(long_poll, LOOPBACK, 0)
    try:
        async with start_proxy(f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}") as proxy:
            client = await RawConnection.open(proxy.address.port)
            await client.send(request_bytes("GET", "/poll"))
            async with asyncio.timeout(WAIT):
                head = await client.reader.readuntil(b"\r\n\r\n")
            client_saw_head.set()
            async with asyncio.timeout(WAIT):
                body = await client.reader.readexactly(4)
            await client.close()
    finally:
        server.close()
        await server.wait_closed()
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b"late"
