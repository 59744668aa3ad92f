"""The two lifetimes of the upstream client: a connection outlives its exchanges.

``proxy.upstream.connection.UpstreamConnection`` keeps the socket; each exchange's state is a
``proxy.upstream.round_trip.RoundTrip`` made by ``send_request`` and dropped whole when the pool
takes the connection back. These tests drive a real pool against a real loopback listener that
answers each request head with the test's bytes, so what one exchange left could only show in
the next one on the same socket. ``ResponseHead``'s framing (``proxy.upstream.head``) is a table.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from proxy.upstream.address import Upstream
from proxy.upstream.connection import UpstreamBrokenError
from proxy.upstream.head import ResponseHead
from proxy.upstream.pool import UpstreamPool
from tests.support import LOOPBACK, WAIT

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"


@dataclass
class AnsweringUpstream:
    """Answers each request head it reads with the next of ``answers``; counts connections."""

    answers: list[bytes]
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the proxy's side of a connection ended."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(self.answers.pop(0))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()


@asynccontextmanager
async def pool_for(upstream: AnsweringUpstream) -> AsyncIterator[UpstreamPool]:
    server = await asyncio.start_server(upstream.serve, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(
        Upstream(LOOPBACK, port), connect_timeout=WAIT, read_timeout=WAIT, keepalive_timeout=WAIT
    )
    try:
        yield pool
    finally:
        await pool.close()
        for writer in upstream.writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def body_of(pool: UpstreamPool, request: bytes, *, head_only: bool = False) -> bytes:
    """One whole exchange on a pooled connection; the connection goes back to the pool."""
    connection = await pool.acquire()
    async with asyncio.timeout(WAIT):
        connection.send_request(request, head_only=head_only, body_follows=False)
        await connection.response_head()
        body = b""
        while chunk := await connection.read_body():
            body += chunk
    pool.release(connection)
    return body


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


async def test_a_pooled_connection_carries_no_exchange_until_the_next_request() -> None:
    upstream = AnsweringUpstream([answer(b"first"), answer(b"second")])
    async with pool_for(upstream) as pool:
        assert await body_of(pool, GET) == b"first"
        connection = await pool.acquire()
        # The first exchange was dropped whole at release: nothing of its answer is left.
        assert connection.head is None
        assert not connection.reusable
        async with asyncio.timeout(WAIT):
            connection.send_request(GET, head_only=False, body_follows=False)
            head = await connection.response_head()
            assert head.content_length == len(b"second")
            assert await connection.read_body() == b"second"
            assert await connection.read_body() == b""
        assert connection.reusable
        pool.release(connection)
    assert len(upstream.writers) == 1  # one socket carried both exchanges


async def test_an_answer_to_head_leaves_nothing_for_the_next_exchange() -> None:
    # The HEAD answer announces 5 bytes it never sends (RFC 9110 §9.3.2); the GET that follows
    # on the same connection must read its own answer, not wait for those 5 bytes.
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    upstream = AnsweringUpstream([head_answer, answer(b"after")])
    async with pool_for(upstream) as pool:
        assert await body_of(pool, HEAD, head_only=True) == b""
        assert pool.idle_count == 1
        assert await body_of(pool, GET) == b"after"
    assert len(upstream.writers) == 1


async def test_a_byte_while_idle_closes_the_connection_and_fails_no_exchange() -> None:
    upstream = AnsweringUpstream([answer(b"ok"), answer(b"new")])
    async with pool_for(upstream) as pool:
        first = await pool.acquire()
        async with asyncio.timeout(WAIT):
            first.send_request(GET, head_only=False, body_follows=False)
            await first.response_head()
            assert await first.read_body() == b"ok"
            assert await first.read_body() == b""
        pool.release(first)
        upstream.writers[0].write(b"HTTP/1.1 200 OK\r\n")  # nobody asked
        async with asyncio.timeout(WAIT):
            await upstream.closed.wait()  # the proxy closed that connection
        assert first.closing
        assert first.head is None  # no exchange was there to fail
        assert await body_of(pool, GET) == b"new"
    assert len(upstream.writers) == 2  # the closed connection was not handed out again


async def test_a_fresh_exchange_does_not_inherit_an_unread_failure() -> None:
    # The first exchange breaks (the upstream closes mid-body); its connection is closed, and the
    # next exchange, on a new connection, starts clean.
    upstream = AnsweringUpstream([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"])
    async with pool_for(upstream) as pool:
        connection = await pool.acquire()
        async with asyncio.timeout(WAIT):
            connection.send_request(GET, head_only=False, body_follows=False)
            await connection.response_head()
            upstream.writers[0].close()
            assert await connection.read_body() == b"short"
            with pytest.raises(UpstreamBrokenError, match="closed_mid_body"):
                await connection.read_body()
        assert not connection.reusable
        pool.release(connection)
        assert pool.idle_count == 0


@pytest.mark.parametrize(
    ("status", "fields", "content_length", "chunked", "ended_by_close"),
    [
        pytest.param(200, [(b"Content-Length", b"5")], 5, False, False, id="length"),
        pytest.param(200, [(b"Transfer-Encoding", b"chunked")], None, True, False, id="chunked"),
        pytest.param(
            200,
            [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"gzip, chunked")],
            None,
            True,
            False,
            id="transfer-encoding-overrides-length",
        ),
        pytest.param(
            200, [(b"Transfer-Encoding", b"gzip")], None, False, True, id="last-coding-not-chunked"
        ),
        pytest.param(200, [], None, False, True, id="no-framing-read-until-close"),
        pytest.param(204, [], None, False, False, id="no-content-never-has-a-body"),
        pytest.param(304, [], None, False, False, id="not-modified-never-has-a-body"),
    ],
)
def test_the_head_frames_the_body_as_rfc_9112_section_6_3_says(
    status: int,
    fields: list[tuple[bytes, bytes]],
    content_length: int | None,
    chunked: bool,
    ended_by_close: bool,
) -> None:
    head = ResponseHead(status, "", fields)
    assert (head.content_length, head.chunked, head.is_ended_by_close) == (
        content_length,
        chunked,
        ended_by_close,
    )
