"""Framing is hangup's own: whatever the header list says, the upstream reads one whole request.

Every test here reads the bytes that reached the upstream with h11, llhttp and aiohttp's parser
(``tests.wire_parsers``), not with hangup's own view of what it sent.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from demo_backend.app import create_app
from tests.conftest import ProxyFactory
from tests.inprocess_uvicorn import running_uvicorn
from tests.raw_upstream import RawUpstream, answer_with, response_bytes
from tests.support import WAIT, RawConnection, exchange
from tests.wire_parsers import (
    WireAnswer,
    WireMessage,
    read_answers_by_every_parser,
    read_by_every_parser,
)

SMUGGLED = b"GET /slow?seconds=2 HTTP/1.1\r\nHost: a\r\n\r\n"
BIG_SMUGGLE = SMUGGLED + b"x" * 70_000  # past the 64 KiB small-body path: streamed


def nominating(method: str, connection: str, body: bytes, *, length: bytes | None = None) -> bytes:
    declared = str(len(body)).encode() if length is None else length
    return (
        f"{method} /echo?attacker=1 HTTP/1.1\r\nHost: a\r\n".encode()
        + b"Content-Length: "
        + declared
        + f"\r\nConnection: {connection}\r\n\r\n".encode()
        + body
    )


async def upstream_reading(upstream: RawUpstream) -> list[WireMessage]:
    """Every request on the first upstream connection, as all three parsers read it."""
    [connection] = upstream.connections
    return read_by_every_parser(bytes(connection.received))


@pytest.mark.parametrize(
    ("request_bytes", "method", "body"),
    [
        pytest.param(
            nominating("POST", "Content-Length", SMUGGLED), "POST", SMUGGLED, id="issue-12-as-sent"
        ),
        pytest.param(
            nominating("POST", "keep-alive, Content-Length", SMUGGLED),
            "POST",
            SMUGGLED,
            id="a-list-in-connection",
        ),
        pytest.param(
            nominating("POST", "content-length", BIG_SMUGGLE),
            "POST",
            BIG_SMUGGLE,
            id="a-body-over-64-kib",
        ),
        pytest.param(
            nominating("GET", "Content-Length", SMUGGLED), "GET", SMUGGLED, id="get-with-a-body"
        ),
        pytest.param(
            nominating("POST", "Content-Length, Host, X-Forwarded-For", SMUGGLED),
            "POST",
            SMUGGLED,
            id="nominating-host-and-forwarding-fields",
        ),
    ],
)
async def test_a_body_whose_length_connection_nominates_reaches_the_upstream_as_one_request(
    upstream: RawUpstream,
    start_proxy: ProxyFactory,
    request_bytes: bytes,
    method: str,
    body: bytes,
) -> None:
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, request_bytes)
        await upstream.wait_requests(1)
    assert response.status == 200
    [message] = await upstream_reading(upstream)
    assert (message.method, message.target) == (method, "/echo?attacker=1")
    assert message.body == body
    assert message.header_values("content-length") == [str(len(body))]
    assert message.header_values("host") == ["a"]
    assert message.header_values("x-forwarded-for") == ["127.0.0.1"]
    assert len(message.header_values("x-request-id")) == 1


@pytest.mark.parametrize(
    ("declared", "canonical"),
    [
        pytest.param(b"010", "10", id="leading-zeros"),
        pytest.param(b"0000000010", "10", id="many-leading-zeros"),
    ],
)
async def test_a_content_length_reaches_the_upstream_in_canonical_decimal(
    upstream: RawUpstream, start_proxy: ProxyFactory, declared: bytes, canonical: str
) -> None:
    body = b"0123456789"
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(
            proxy.address.port, nominating("POST", "keep-alive", body, length=declared)
        )
    assert response.status == 200
    [message] = await upstream_reading(upstream)
    assert message.header_values("content-length") == [canonical]
    assert message.body == body


async def test_a_chunked_body_whose_coding_connection_nominates_is_sent_on_chunked(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    sent = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: Transfer-Encoding, Content-Length\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, sent)
    assert response.status == 200
    [message] = await upstream_reading(upstream)
    assert message.body == b"hello world"
    assert message.header_values("transfer-encoding") == ["chunked"]
    assert message.header_values("content-length") == []


async def test_an_empty_declared_body_is_sent_with_content_length_zero(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, nominating("POST", "Content-Length", b""))
    assert response.status == 200
    [message] = await upstream_reading(upstream)
    assert message.header_values("content-length") == ["0"]


@pytest.mark.parametrize(
    "connection",
    ["Content-Length", "keep-alive, Content-Length", "Transfer-Encoding"],
)
async def test_an_answer_whose_length_connection_nominates_reaches_the_client_framed_by_hangup(
    start_proxy: ProxyFactory, connection: str
) -> None:
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"  # looks like a second answer
    answer = response_bytes(
        200, body, [("Content-Length", str(len(body))), ("Connection", connection)]
    )
    upstream = RawUpstream(answer_with(answer))
    await upstream.start()
    try:
        async with start_proxy(upstream.url) as proxy:
            client = await RawConnection.open(proxy.address.port)
            await client.send(
                b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            async with asyncio.timeout(WAIT):
                received = await client.reader.read()
            await client.close()
    finally:
        await upstream.close()
    answers = read_answers_by_every_parser(received, ["GET", "GET"])
    assert answers == [WireAnswer(200, body), WireAnswer(200, body)]
    assert received.count(b"Content-Length: %d\r\n" % len(body)) == 2


async def test_the_issue_12_smuggle_against_uvicorn_answers_only_the_attacker(
    start_proxy: ProxyFactory,
) -> None:
    """The report's own scenario: the smuggled GET never runs, and the next client gets its own."""
    async with (
        running_uvicorn(create_app()) as backend,
        start_proxy(f"http://127.0.0.1:{backend.port}") as proxy,
    ):
        attacker = await exchange(
            proxy.address.port, nominating("POST", "Content-Length", SMUGGLED)
        )
        victim = await exchange(
            proxy.address.port, b"GET /echo?victim=1 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
    assert attacker.status == 200
    assert attacker.json()["body_sha256"] == hashlib.sha256(SMUGGLED).hexdigest()
    assert victim.status == 200
    assert victim.json()["query_string"] == "victim=1"
