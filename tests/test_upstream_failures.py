"""When the upstream fails: 502 if refused or broken, 504 if silent, a cut once streaming."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream, ReceivedRequest, UpstreamConnection, never_answer
from tests.support import LOOPBACK, RawConnection, request_bytes, watch_logs


def _closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


async def test_refused_upstream_answers_502_within_a_second(start_proxy: ProxyFactory) -> None:
    async with start_proxy(f"http://{LOOPBACK}:{_closed_port()}") as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            started = time.monotonic()
            await client.send(request_bytes("GET", "/", [("X-Request-ID", "refused-1")]))
            response = await client.read_response()
            elapsed = time.monotonic() - started
            line = await logs.wait_for("request")
        await client.close()
    assert response.status == 502
    assert b"upstream" in response.body
    assert elapsed < 1.0
    assert (line["outcome"], line["status"], line["request_id"]) == (
        "upstream_error",
        502,
        "refused-1",
    )
    assert line["log_level"] == "warning"
    assert "exc_info" not in line


async def test_silent_upstream_answers_504_after_the_upstream_timeout(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = never_answer
    async with start_proxy(upstream.url, upstream_timeout=0.3) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("GET", "/"))
            response = await client.read_response()
            line = await logs.wait_for("request")
        await upstream.wait_until(lambda: upstream.closed_count() == 1)
        await client.close()
    assert response.status == 504
    assert (line["outcome"], line["status"]) == ("upstream_timeout", 504)


async def test_slow_upload_is_not_blamed_on_the_upstream(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    """The upstream clock starts once the request is sent, as nginx's proxy_read_timeout does.

    With request buffering off, so that the body is streamed while the upstream waits."""
    async with start_proxy(upstream.url, upstream_timeout=0.3, request_buffer_size=0) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("PUT", "/", [("Content-Length", "10")]) + b"12345")
        await upstream.wait_until(lambda: len(upstream.connections) == 1)
        await upstream.connections[0].first_byte.wait()
        # Not a wait for an event: the slow client itself, holding the rest of its body for
        # longer than the upstream timeout.
        await asyncio.sleep(0.6)
        await client.send(b"67890")
        response = await client.read_response()
        await client.close()
    assert response.status == 200
    assert upstream.requests[0].body == b"1234567890"


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(None, id="closed-without-answer"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            id="cl-and-te",
        ),
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", id="bad-status-line"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk-size"
        ),
    ],
)
async def test_broken_upstream_answer_gives_502_and_the_connection_is_not_reused(
    upstream: RawUpstream, start_proxy: ProxyFactory, answer: bytes | None
) -> None:
    async def broken(request: ReceivedRequest, connection: UpstreamConnection) -> bytes | None:
        if connection.number == 0:
            return answer
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    upstream.answer = broken
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/"))
        first = await client.read_response()
        await client.close()
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/"))
        second = await client.read_response()
        await client.close()
        await upstream.wait_until(lambda: upstream.closed_count() >= 1)
    if first.status == 200:
        # A bad chunk is found only once streaming began: the client must see a cut, not a
        # complete-looking body.
        assert answer is not None
        assert b"zz" not in first.body
    else:
        assert first.status == 502
    assert second.status == 200
    assert upstream.connections[0].closed.is_set()
    assert upstream.connections[0].requests[0].target == "/"
    assert len(upstream.connections) == 2


async def test_upstream_stalling_mid_body_cuts_the_client_connection(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async def dies(request: ReceivedRequest, connection: UpstreamConnection) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part"

    upstream.answer = dies
    async with start_proxy(upstream.url, upstream_timeout=0.5) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("GET", "/"))
            async with asyncio.timeout(5):
                head = await client.reader.readuntil(b"\r\n\r\n")
                rest = await client.reader.read()  # ends at the cut
            line = await logs.wait_for("request")
        await client.close()
    assert b"Content-Length: 100" in head
    assert rest == b"only-part"
    assert line["outcome"] in ("upstream_error", "upstream_timeout")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "GET", "POST"])
async def test_a_request_the_upstream_dropped_is_never_retried(
    upstream: RawUpstream, start_proxy: ProxyFactory, method: str
) -> None:
    """aiohttp's client would retry idempotent methods on a reused connection: not here."""

    async def drop_the_second(
        request: ReceivedRequest, connection: UpstreamConnection
    ) -> bytes | None:
        if request.target == "/warm":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        return None

    upstream.answer = drop_the_second
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/warm"))
        assert (await client.read_response()).status == 200
        # Sent on the pooled connection that served /warm.
        await client.send(request_bytes(method, "/once"))
        response = await client.read_response()
        await client.close()
    assert response.status == 502
    assert [request.target for request in upstream.requests] == ["/warm", "/once"]
