"""Connection limits answer 503 at once; body limits answer 413, even mid-stream."""

from __future__ import annotations

import asyncio

from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream, ReceivedRequest, UpstreamConnection, response_bytes
from tests.support import RawConnection, request_bytes, watch_logs


async def test_a_client_over_the_connection_limit_gets_503_at_once(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url, max_client_connections=3) as proxy:
        held = [await RawConnection.open(proxy.address.port) for _ in range(3)]
        with watch_logs() as logs:
            extra = await RawConnection.open(proxy.address.port)
            answer = await extra.read_response()
            line = await logs.wait_for("request_rejected")
        await extra.close()
        # The held connections are still served.
        await held[0].send(request_bytes("GET", "/"))
        assert (await held[0].read_response()).status == 200
        for client in held:
            await client.close()
    assert answer.status == 503
    assert answer.body == b"503 too many client connections\n"
    assert line["reason"] == "client_connection_limit"


async def test_a_request_over_the_upstream_limit_gets_503_at_once(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    release = asyncio.Event()

    async def slow(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        if request.target == "/slow":
            await release.wait()
        return response_bytes(200, b"ok")

    upstream.answer = slow
    async with start_proxy(upstream.url, upstream_max_connections=2) as proxy:
        busy = [await RawConnection.open(proxy.address.port) for _ in range(2)]
        for client in busy:
            await client.send(request_bytes("GET", "/slow"))
        await upstream.wait_requests(2)
        extra = await RawConnection.open(proxy.address.port)
        await extra.send(request_bytes("GET", "/extra"))
        refused = await extra.read_response()
        await extra.close()
        release.set()
        for client in busy:
            assert (await client.read_response()).status == 200
            await client.close()
        # With the slots free again, requests flow.
        after = await RawConnection.open(proxy.address.port)
        await after.send(request_bytes("GET", "/after"))
        assert (await after.read_response()).status == 200
        await after.close()
    assert refused.status == 503
    assert refused.body == b"503 too many upstream requests at once\n"
    assert [request.target for request in upstream.requests] == ["/slow", "/slow", "/after"]


async def test_a_declared_body_over_the_limit_is_refused_before_anything_is_sent(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url, max_body_size=1000) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("POST", "/", [("Content-Length", "5000")]))
        answer = await client.read_response()
        await client.close()
    assert answer.status == 413
    assert answer.body == b"413 request body over 1000 bytes\n"
    assert upstream.connections == []


async def test_a_chunked_body_crossing_the_limit_is_cut_and_refused_with_413(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url, max_body_size=1000) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            chunk = b"200\r\n" + b"x" * 512 + b"\r\n"
            await client.send(
                request_bytes("PUT", "/", [("Transfer-Encoding", "chunked")]) + chunk * 3
            )
            answer = await client.read_response()
            line = await logs.wait_for("request")
        await upstream.wait_until(lambda: upstream.closed_count() == len(upstream.connections))
        await client.close()
    assert answer.status == 413
    assert (line["status"], line["reason"]) == (413, "body_too_large")
    assert upstream.requests == []  # the upstream never saw a whole request


async def test_a_body_within_the_limit_is_forwarded(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url, max_body_size=1000) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("POST", "/", body=b"y" * 1000))
        answer = await client.read_response()
        await client.close()
    assert answer.status == 200
    assert upstream.requests[0].body == b"y" * 1000
