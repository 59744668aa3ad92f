"""A regression corpus of malformed and smuggling requests, written byte for byte.

Each goes through the real proxy to a raw-socket upstream that records every byte it receives.
A refused request must get its status and reach the upstream neither whole nor in part; an
accepted one must arrive in one unambiguous framing (only Content-Length or only chunked).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream
from tests.support import RawConnection, watch_logs

H = b"Host: test.local\r\n"
REQUEST_LINE = b"POST /target HTTP/1.1\r\n"


def post(*fields: bytes, body: bytes = b"") -> bytes:
    return REQUEST_LINE + H + b"".join(field + b"\r\n" for field in fields) + b"\r\n" + body


REFUSED = [
    # Framing: RFC 9112 §6.1, §6.3 — the classic smuggling shapes.
    (
        "cl-and-te",
        post(b"Content-Length: 4", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
    ),
    (
        "te-and-cl-hiding-a-second-request",
        post(
            b"Transfer-Encoding: chunked",
            b"Content-Length: 40",
            body=b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: test.local\r\n\r\n",
        ),
        400,
    ),
    ("duplicate-differing-cl", post(b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"), 400),
    ("cl-list", post(b"Content-Length: 4, 5", body=b"abcd"), 400),
    ("negative-cl", post(b"Content-Length: -1"), 400),
    ("plus-sign-cl", post(b"Content-Length: +4", body=b"abcd"), 400),
    ("non-numeric-cl", post(b"Content-Length: four"), 400),
    ("hex-cl", post(b"Content-Length: 0x4", body=b"abcd"), 400),
    ("cl-with-space-inside", post(b"Content-Length: 1 0", body=b"abcd"), 400),
    ("te-gzip-only", post(b"Transfer-Encoding: gzip", body=b"abcd"), 400),
    ("te-gzip-then-chunked", post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    ("te-chunked-then-gzip", post(b"Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"), 400),
    (
        "te-chunked-twice",
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
    ),
    ("te-identity", post(b"Transfer-Encoding: identity", body=b"abcd"), 400),
    ("te-xchunked", post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 400),
    ("te-space-before-colon", post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400),
    ("te-vertical-tab", post(b"Transfer-Encoding:\x0bchunked", body=b"0\r\n\r\n"), 400),
    (
        "te-on-http-1.0",
        b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("bad-chunk-size", post(b"Transfer-Encoding: chunked", body=b"zz\r\nab\r\n0\r\n\r\n"), 400),
    ("chunk-lf-only", post(b"Transfer-Encoding: chunked", body=b"2\nab\n0\n\n"), 400),
    (
        "chunk-size-overflow",
        post(b"Transfer-Encoding: chunked", body=b"FFFFFFFFFFFFFFFFF1\r\nab\r\n0\r\n\r\n"),
        400,
    ),
    # Header syntax: RFC 9110 §5.1, §5.5; RFC 9112 §5.2 (obs-fold), §2.2 (bare CR).
    ("space-in-name", post(b"X Y: 1"), 400),
    ("brace-in-name", post(b"X{Y}: 1"), 400),
    ("control-byte-in-name", post(b"X\x01Y: 1"), 400),
    ("control-byte-in-value", post(b"X: a\x01b"), 400),
    ("nul-in-value", post(b"X: a\x00b"), 400),
    ("del-in-value", post(b"X: a\x7fb"), 400),
    ("obs-fold", post(b"X: a", b" b"), 400),
    ("bare-cr-in-value", post(b"X: a\rb"), 400),
    ("bare-lf-line-ends", b"GET / HTTP/1.1\nHost: test.local\n\n", 400),
    ("empty-name", post(b": v"), 400),
    ("no-colon", post(b"Novalue"), 400),
    ("no-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # Request line.
    ("lower-case-method-is-not-a-known-method", b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("http-1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 400),
    ("http-2.0-in-a-request-line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("nul-in-target", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("connect", b"CONNECT test.local:443 HTTP/1.1\r\n" + H + b"\r\n", 405),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 501),
    (
        "tls-hello-on-the-http-port",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
        400,
    ),
    # Sizes.
    ("uri-too-long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("header-field-too-large", post(b"X: " + b"a" * 17000), 431),
    ("too-many-headers", post(*[b"X-%d: 1" % n for n in range(150)]), 431),
    ("header-block-too-large", post(*[b"X-%d: %s" % (n, b"a" * 8000) for n in range(10)]), 431),
]

ACCEPTED = [
    ("content-length", post(b"Content-Length: 4", body=b"abcd"), b"abcd", "content-length"),
    (
        "chunked-with-extension",
        post(b"Transfer-Encoding: chunked", body=b"2;x=y\r\nab\r\n0\r\n\r\n"),
        b"ab",
        "transfer-encoding",
    ),
    (
        "chunked-upper-case",
        post(b"Transfer-Encoding: CHUNKED", body=b"2\r\nab\r\n0\r\n\r\n"),
        b"ab",
        "transfer-encoding",
    ),
    (
        "chunked-with-trailer",
        post(b"Transfer-Encoding: chunked", body=b"2\r\nab\r\n0\r\nX-T: 1\r\n\r\n"),
        b"ab",
        "transfer-encoding",
    ),
    ("same-cl-twice", post(b"Content-Length: 4", b"Content-Length: 4", body=b"abcd"), None, None),
]


@pytest.mark.parametrize(
    ("data", "status"), [pytest.param(data, status, id=name) for name, data, status in REFUSED]
)
async def test_malformed_request_is_refused_and_nothing_reaches_the_upstream(
    upstream: RawUpstream, start_proxy: ProxyFactory, data: bytes, status: int
) -> None:
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(data)
            response = await client.read_response()
            # The connection is closed after a refusal: nothing after it is parsed.
            async with asyncio.timeout(5):
                assert await client.reader.read() == b""
            await client.close()
            # Both kinds of refusal are logged before the answer is written.
            [line] = logs.events("request_rejected", status=status) + logs.events(
                "request", status=status
            )
    assert response.status == status
    assert (response.header("Content-Type") or "").startswith("text/plain")
    assert response.body.startswith(f"{status} ".encode())
    assert upstream.connections == []
    assert line["reason"]
    assert not any("exception" in entry or "exc_info" in entry for entry in logs.entries)


@pytest.mark.parametrize(
    ("data", "body", "framing"),
    [pytest.param(data, body, framing, id=name) for name, data, body, framing in ACCEPTED],
)
async def test_accepted_request_arrives_in_one_unambiguous_framing(
    upstream: RawUpstream,
    start_proxy: ProxyFactory,
    data: bytes,
    body: bytes | None,
    framing: str | None,
) -> None:
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(data)
        response = await client.read_response()
        await client.close()
    if body is None:
        # Identical repeats may be refused too (RFC 9112 §6.3 allows either); never forwarded twice.
        assert response.status in (200, 400)
        assert len(upstream.requests) <= 1
        return
    assert response.status == 200
    [request] = upstream.requests
    assert request.body == body
    names = {name.lower() for name in request.header_names}
    assert not {"content-length", "transfer-encoding"} <= names
    assert framing in names
