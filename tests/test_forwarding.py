"""Faithful forwarding: what the client sends is what the upstream gets, and back again."""

from __future__ import annotations

import asyncio
import gzip
import hashlib

import pytest

from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream, answer_with, response_bytes
from tests.support import LOOPBACK, WAIT, RawConnection, exchange, request_bytes
from tests.wire_parsers import WireAnswer, read_answers_by_every_parser

PROXY_ADDED = {
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "hangup-decision",
}


async def test_request_target_is_forwarded_byte_for_byte(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    target = "/a%2Fb/../c//d;p=1?x=%20&y=%zz&z=a+b"
    async with start_proxy(upstream.url) as proxy:
        await exchange(proxy.address.port, request_bytes("GET", target))
    assert upstream.requests[0].target == target


async def test_absolute_form_target_reaches_upstream_in_origin_form(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url) as proxy:
        await exchange(proxy.address.port, request_bytes("GET", "http://test.local/p%41th?q=1"))
    assert upstream.requests[0].target == "/p%41th?q=1"


async def test_end_to_end_request_headers_keep_their_order_and_repeats(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    sent = [("X-B", "2"), ("X-A", "1"), ("Cookie", "a=1"), ("X-B", "3"), ("Accept", "*/*")]
    async with start_proxy(upstream.url) as proxy:
        await exchange(proxy.address.port, request_bytes("GET", "/", sent))
    [request] = upstream.requests
    forwarded = [(n, v) for n, v in request.headers if n.lower() not in PROXY_ADDED | {"host"}]
    assert forwarded == sent
    assert request.headers[0] == ("Host", "test.local")


async def test_proxy_injects_no_headers_of_its_own_beyond_forwarding_fields(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url) as proxy:
        await exchange(proxy.address.port, request_bytes("GET", "/"))
        await exchange(proxy.address.port, request_bytes("POST", "/", body=b"raw bytes"))
    get, post = upstream.requests
    assert {name.lower() for name in get.header_names} == {"host"} | PROXY_ADDED
    assert {name.lower() for name in post.header_names} == {"host", "content-length"} | PROXY_ADDED


async def test_forwarding_fields_are_added_and_client_host_is_preserved(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    sent = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")]
    async with start_proxy(upstream.url) as proxy:
        await exchange(proxy.address.port, request_bytes("GET", "/", sent, host="app.example"))
    [request] = upstream.requests
    assert request.header_values("X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert request.header_values("X-Forwarded-Proto") == ["http"]
    assert request.header_values("X-Forwarded-Host") == ["app.example"]
    assert request.header_values("Host") == ["app.example"]


async def test_client_request_id_is_forwarded_and_a_missing_one_is_generated(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url) as proxy:
        await exchange(proxy.address.port, request_bytes("GET", "/", [("X-Request-ID", "abc-1")]))
        await exchange(proxy.address.port, request_bytes("GET", "/"))
    first, second = upstream.requests
    assert first.header_values("X-Request-ID") == ["abc-1"]
    [generated] = second.header_values("X-Request-ID")
    assert len(generated) == 32
    int(generated, 16)


async def test_hop_by_hop_request_headers_and_connection_nominees_are_removed(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    sent = [
        ("Connection", "keep-alive, X-Hop"),
        ("Connection", "x-other-hop"),
        ("X-Hop", "secret"),
        ("X-Other-Hop", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "h2c"),
        ("X-Kept", "yes"),
    ]
    async with start_proxy(upstream.url) as proxy:
        await exchange(proxy.address.port, request_bytes("GET", "/", sent))
    [request] = upstream.requests
    names = {name.lower() for name in request.header_names}
    assert names == {"host", "x-kept"} | PROXY_ADDED


async def test_hop_by_hop_response_headers_and_connection_nominees_are_removed(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = answer_with(
        response_bytes(
            200,
            b"ok",
            [
                ("Connection", "X-Secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"),
                ("Trailer", "X-T"),
                ("Upgrade", "h2c"),
                ("X-Kept", "yes"),
            ],
        )
    )
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, request_bytes("GET", "/"))
    names = {name.lower() for name, _ in response.headers}
    assert "x-kept" in names
    assert not names & {"x-secret", "keep-alive", "proxy-authenticate", "trailer", "upgrade"}
    assert response.header_values("Connection") in ([], ["keep-alive"])


@pytest.mark.parametrize(
    ("status", "reason", "body"),
    [
        pytest.param(200, "OK", b"fine", id="200"),
        pytest.param(201, "Created", b"made", id="201"),
        pytest.param(404, "Not Found", b"nothing here", id="404"),
        pytest.param(418, "I'm a teapot", b"short and stout", id="418-reason-kept"),
        pytest.param(500, "Internal Server Error", b"boom", id="500-stays-500"),
        pytest.param(503, "Service Unavailable", b"later", id="503"),
    ],
)
async def test_upstream_status_reason_and_body_pass_through(
    upstream: RawUpstream, start_proxy: ProxyFactory, status: int, reason: str, body: bytes
) -> None:
    upstream.answer = answer_with(
        response_bytes(status, body, [("Content-Type", "text/plain")], reason)
    )
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, request_bytes("GET", "/"))
    assert (response.status, response.reason, response.body) == (status, reason, body)


async def test_several_set_cookie_fields_stay_separate_and_in_order(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    cookies = ["a=1; Path=/", "b=2; Expires=Wed, 09 Jun 2027 10:18:14 GMT", "c=3; HttpOnly"]
    upstream.answer = answer_with(
        response_bytes(200, b"", [("Set-Cookie", cookie) for cookie in cookies])
    )
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, request_bytes("GET", "/"))
        # The cookie must not be stored and replayed to the next client.
        await exchange(proxy.address.port, request_bytes("GET", "/"))
    assert response.header_values("Set-Cookie") == cookies
    assert upstream.requests[1].header("Cookie") is None


async def test_response_headers_are_not_invented(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, request_bytes("GET", "/"))
    assert response.header("Content-Type") is None
    assert response.header("Server") is None
    assert response.body == b"abc"


async def test_compressed_bodies_pass_through_untouched_both_ways(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    payload = gzip.compress(b"hello " * 1000)
    upstream.answer = answer_with(
        response_bytes(200, payload, [("Content-Encoding", "gzip"), ("Content-Type", "text/x")])
    )
    headers = [("Content-Encoding", "gzip"), ("Accept-Encoding", "gzip")]
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(
            proxy.address.port, request_bytes("POST", "/", headers, body=payload)
        )
    assert upstream.requests[0].body == payload
    assert response.body == payload
    assert response.header("Content-Encoding") == "gzip"


async def test_head_keeps_the_upstream_content_length_and_sends_no_body(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("HEAD", "/file"))
        response = await client.read_response(head=True)
        # The next request on the same connection parses cleanly: no stray body bytes.
        upstream.answer = answer_with(response_bytes(200, b"next"))
        await client.send(request_bytes("GET", "/next"))
        following = await client.read_response()
        await client.close()
    assert response.header("Content-Length") == "1234"
    assert following.body == b"next"


@pytest.mark.parametrize("status", [204, 304])
async def test_no_content_and_not_modified_carry_no_body(
    upstream: RawUpstream, start_proxy: ProxyFactory, status: int
) -> None:
    upstream.answer = answer_with(f'HTTP/1.1 {status} X\r\nETag: "v1"\r\n\r\n'.encode())
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/"))
        response = await client.read_response()
        upstream.answer = answer_with(response_bytes(200, b"next"))
        await client.send(request_bytes("GET", "/next"))
        following = await client.read_response()
        await client.close()
    assert response.status == status
    assert response.header("Transfer-Encoding") is None
    assert response.header("ETag") == '"v1"'
    assert following.body == b"next"


async def test_expect_100_continue_is_answered_before_the_body_is_sent(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(
            request_bytes("PUT", "/up", [("Expect", "100-continue"), ("Content-Length", "5")], b"")
        )
        async with asyncio.timeout(5):
            interim = await client.reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        await client.send(b"hello")
        response = await client.read_response()
        await client.close()
    assert response.status == 200
    [request] = upstream.requests
    assert request.body == b"hello"
    assert request.header("Expect") is None


async def test_a_body_sent_along_with_expect_100_continue_is_forwarded_with_no_interim_answer(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    """A small body that arrived with its head goes upstream with it in one write
    (``proxy.serving.forward.Forwarder._read_ahead``); a 100 Continue would then ask for what is
    already here, and RFC 9110 §10.1.1 lets a server that has the content leave it out."""
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(
            request_bytes(
                "PUT", "/up", [("Expect", "100-continue"), ("Content-Length", "5")], b"hello"
            )
        )
        async with asyncio.timeout(WAIT):
            first_head = await client.reader.readuntil(b"\r\n\r\n")
        await client.close()
    assert first_head.startswith(b"HTTP/1.1 200 ")
    [request] = upstream.requests
    assert request.body == b"hello"
    assert request.header("Expect") is None


async def test_unknown_expectation_is_refused_with_417(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(
            proxy.address.port, request_bytes("GET", "/", [("Expect", "something-else")])
        )
    assert response.status == 417
    assert upstream.requests == []


async def test_http_1_0_client_gets_a_non_chunked_answer(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = answer_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, request_bytes("GET", "/", version="HTTP/1.0"))
    assert response.version == "HTTP/1.0"
    assert response.header("Transfer-Encoding") is None
    assert response.body == b"hello world"


async def test_chunked_request_body_is_forwarded_chunked_without_content_length(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    body = b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(
            proxy.address.port,
            request_bytes("POST", "/", [("Transfer-Encoding", "chunked")], body),
        )
    assert response.status == 200
    [request] = upstream.requests
    assert request.chunked
    assert request.body == b"abcdefg"
    assert request.header("Content-Length") is None


async def test_client_and_upstream_connections_are_kept_alive(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        for number in range(3):
            await client.send(request_bytes("GET", f"/{number}"))
            response = await client.read_response()
            assert response.status == 200
        await client.close()
    assert len(upstream.connections) == 1
    assert [request.target for request in upstream.connections[0].requests] == ["/0", "/1", "/2"]


async def test_large_upload_streams_to_upstream_before_the_client_finishes(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    size = 50 * 1024 * 1024
    block = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256(block * 50).hexdigest()
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("PUT", "/big", [("Content-Length", str(size))]))
        await client.send(block)
        await upstream.wait_until(lambda: len(upstream.connections) == 1)
        # Half a MiB of body is at the upstream while 49 MiB are still unsent.
        await upstream.connections[0].wait_received(512 * 1024)
        for _ in range(49):
            await client.send(block)
        response = await client.read_response()
        await client.close()
    assert response.status == 200
    [request] = upstream.requests
    assert len(request.body) == size
    assert hashlib.sha256(request.body).hexdigest() == digest


async def test_large_response_streams_through_whole(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    body = bytes(range(256)) * 40960  # 10 MiB
    upstream.answer = answer_with(response_bytes(200, body))
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, request_bytes("GET", "/big"))
    assert response.header("Content-Length") == str(len(body))
    assert response.body == body


@pytest.mark.parametrize(
    "upstream_date", [True, False], ids=["the upstream's Date", "a Date of the proxy's"]
)
async def test_an_answer_that_came_whole_reaches_the_client_as_the_same_answer_streamed_does(
    start_proxy: ProxyFactory, upstream_date: bool
) -> None:
    # One answer twice on one keep-alive connection: first written whole (hangup writes it in one
    # piece, proxy.wire.response.whole_answer), then its head alone, the body only once the
    # client has read that head (so hangup streamed it, through aiohttp's StreamResponse).
    fields = [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    if upstream_date:
        fields.append(("Date", "Wed, 09 Jun 2027 10:18:14 GMT"))
    # ASCII values only: aiohttp writes a streamed answer's fields as UTF-8, so an obs-text byte
    # (RFC 9110 §5.5) reaches the client re-encoded on that path, byte for byte on the other.
    fields += [("X-Custom", "v 1"), ("Content-Length", "5")]
    head = response_bytes(200, b"", fields, reason="Fine")
    body = b"hello"
    body_may_follow = asyncio.Event()
    handlers: list[asyncio.Task[object]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        while True:
            try:
                request = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                writer.close()  # the proxy closed its pooled connection
                return
            if request.startswith(b"GET /streamed "):
                writer.write(head)
                await writer.drain()
                await body_may_follow.wait()
                writer.write(body)
            else:
                writer.write(head + body)
            await writer.drain()

    server = await asyncio.start_server(serve, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with start_proxy(f"http://{LOOPBACK}:{port}") as proxy:
            client = await RawConnection.open(proxy.address.port)
            async with asyncio.timeout(WAIT):
                await client.send(request_bytes("GET", "/whole"))
                whole_head = await client.reader.readuntil(b"\r\n\r\n")
                whole = whole_head + await client.reader.readexactly(len(body))
                await client.send(request_bytes("GET", "/streamed"))
                streamed_head = await client.reader.readuntil(b"\r\n\r\n")
                body_may_follow.set()
                streamed = streamed_head + await client.reader.readexactly(len(body))
            await client.close()
        # The proxy closed its pooled connection as it stopped: each handler saw it end.
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*handlers)
    finally:
        server.close()
        await server.wait_closed()

    def without_date(answer: bytes) -> bytes:
        return b"".join(
            line for line in answer.splitlines(keepends=True) if not line.startswith(b"Date: ")
        )

    assert whole.count(b"\r\nDate: ") == streamed.count(b"\r\nDate: ") == 1
    if upstream_date:
        assert whole == streamed
        assert b"\r\nDate: Wed, 09 Jun 2027 10:18:14 GMT\r\n" in whole
    else:
        assert without_date(whole) == without_date(streamed)
    assert whole.startswith(b"HTTP/1.1 200 Fine\r\n")
    assert b"\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n" in whole
    assert read_answers_by_every_parser(whole + streamed, ["GET", "GET"]) == [
        WireAnswer(200, body),
        WireAnswer(200, body),
    ]
