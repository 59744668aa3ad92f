"""The proxy's own HTTP/1.1 client (``proxy.upstream.connection``): framing, interim answers, reuse.

Each test pins one thing the pooled client must get right on its own now that aiohttp's
``ClientSession`` is gone: when an upstream connection may carry the next request, and what the
client sees when the upstream answers early, oddly, or brokenly. ``RawUpstream`` serves the tests
that answer whole requests; ``ScriptedUpstream`` hands each connection to the test's own script for
those that must answer early, stop reading, close, or speak unasked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.settings.config import ProxyConfig
from proxy.upstream.connection import MAX_HEAD_SIZE
from tests.conftest import ProxyFactory
from tests.raw_upstream import (
    RawUpstream,
    ReceivedRequest,
    UpstreamConnection,
    answer_with,
    response_bytes,
)
from tests.support import (
    LOOPBACK,
    WAIT,
    RawConnection,
    RawResponse,
    exchange,
    read_response,
    request_bytes,
    watch_logs,
)


@pytest.fixture
def proxy_config(proxy_config: Callable[..., ProxyConfig]) -> Callable[..., ProxyConfig]:
    """conftest's, with idle upstream connections kept longer than any bounded wait here.

    So a close a test waits for is never the keep-alive timeout's, unless the test sets one.
    """

    def make(upstream_url: str, **overrides: Any) -> ProxyConfig:
        return proxy_config(upstream_url, **{"upstream_keepalive_timeout": 4 * WAIT, **overrides})

    return make


async def logged_exchange(
    port: int, data: bytes, *, head: bool = False
) -> tuple[RawResponse, MutableMapping[str, Any]]:
    """One exchange, with the proxy's canonical line for it."""
    with watch_logs() as logs:
        response = await exchange(port, data, head=head)
        line = await logs.wait_for("request")
    return response, line


# --- a scripted upstream -----------------------------------------------------------------------


@dataclass
class ScriptedConnection:
    """One accepted upstream connection, driven by the test's script."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    released: asyncio.Event
    proxy_closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the script saw the proxy close its end (FIN or RST)."""

    async def read_head(self) -> bytes:
        async with asyncio.timeout(WAIT):
            return await self.reader.readuntil(b"\r\n\r\n")

    async def read_until_eof(self) -> None:
        """Read and drop everything until the proxy closes its end (a lingering close)."""
        async with asyncio.timeout(WAIT):
            # A RST is the proxy aborting a connection with unsent bytes: a close all the same.
            with contextlib.suppress(ConnectionResetError):
                while await self.reader.read(65536):
                    pass
        self.proxy_closed.set()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(WAIT):
            await self.writer.drain()

    async def hold(self) -> None:
        """Neither read nor write until the test is over: a wedged backend."""
        async with asyncio.timeout(WAIT):
            await self.released.wait()


Script = Callable[[ScriptedConnection], Awaitable[None]]


class ScriptedUpstream:
    """A listener that runs ``script`` for each connection, then closes it.

    A script that fails (a bounded wait that ran out) fails the test when the listener closes.
    """

    def __init__(self, script: Script) -> None:
        self._script = script
        self.connections: list[ScriptedConnection] = []
        self.failures: list[Exception] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.released = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = ScriptedConnection(len(self.connections), reader, writer, self.released)
        self.connections.append(connection)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._script(connection)
        except ConnectionError:
            # The proxy cut the connection while the script was writing or reading.
            connection.proxy_closed.set()
        except Exception as exc:  # noqa: BLE001 - handed to the test, which raises it
            self.failures.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.tasks.discard(task)


@contextlib.asynccontextmanager
async def scripted_upstream(script: Script) -> AsyncIterator[ScriptedUpstream]:
    upstream = ScriptedUpstream(script)
    server = await asyncio.start_server(upstream.serve, LOOPBACK, 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()
        # A script still holding its connection lets go; one still reading sees the proxy's close.
        upstream.released.set()
        if upstream.tasks:
            await asyncio.wait(set(upstream.tasks), timeout=WAIT)
        await server.wait_closed()
    for failure in upstream.failures:
        raise failure


async def serve_one_request(connection: ScriptedConnection, answer: bytes) -> None:
    """Read a bodyless request (or one with a small Content-Length body), then answer it."""
    head = await connection.read_head()
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            async with asyncio.timeout(WAIT):
                await connection.reader.readexactly(int(value))
    await connection.send(answer)


async def read_until_eof(client: RawConnection) -> bytes:
    async with asyncio.timeout(WAIT):
        return await client.reader.read()


# --- early answers and uploads ------------------------------------------------------------------

UPLOAD_SIZE = 8 * 1024 * 1024
FIRST_PART = b"u" * (64 * 1024)


@pytest.mark.parametrize(
    "early",
    [
        pytest.param(
            b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\n"
            b"too big\n",
            id="413-connection-close",
        ),
        pytest.param(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 7\r\n\r\nwho?..\n", id="401-keep-alive"
        ),
    ],
)
async def test_an_answer_before_the_upload_is_read_reaches_the_client_and_is_not_reused(
    start_proxy: ProxyFactory, early: bytes
) -> None:
    early_status = int(early.split(b" ")[1])
    answered = asyncio.Event()

    async def script(connection: ScriptedConnection) -> None:
        if connection.number == 0:
            await connection.read_head()
            # Not one byte of the body is read before answering (RFC 9112 §9.3).
            await connection.send(early)
            answered.set()
            # Lingering close: keep reading until the proxy gives up the connection.
            await connection.read_until_eof()
        else:
            await serve_one_request(connection, response_bytes(200, b"fresh"))

    async with scripted_upstream(script) as upstream, start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(
                request_bytes("PUT", "/upload", [("Content-Length", str(UPLOAD_SIZE))]) + FIRST_PART
            )
            # The rest of the body is never sent: the answer must not wait for it.
            response = await client.read_response()
            line = await logs.wait_for("request")
        async with asyncio.timeout(WAIT):
            await upstream.connections[0].proxy_closed.wait()
        await client.close()
        after = await exchange(proxy.address.port, request_bytes("GET", "/after"))
    assert answered.is_set()
    assert response.status == early_status
    assert response.body == early.partition(b"\r\n\r\n")[2]
    assert (line["status"], line["upstream_status"]) == (early_status, early_status)
    assert (after.status, after.body) == (200, b"fresh")
    assert len(upstream.connections) == 2


async def test_an_early_answer_followed_at_once_by_a_close_reaches_the_client(
    start_proxy: ProxyFactory,
) -> None:
    """No lingering close: the upstream closes with the upload unread, so its kernel sends a RST."""

    async def script(connection: ScriptedConnection) -> None:
        await connection.read_head()
        await connection.send(
            b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbig"
        )

    async with scripted_upstream(script) as upstream, start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            client.writer.write(
                request_bytes("POST", "/", [("Content-Length", str(UPLOAD_SIZE))])
                + b"b" * UPLOAD_SIZE
            )
            response = await client.read_response()
            line = await logs.wait_for("request")
        client.hang_up("rst")
    assert (response.status, line.get("reason")) == (413, None)


async def test_an_upstream_that_stops_reading_mid_upload_and_closes_gives_502(
    start_proxy: ProxyFactory,
) -> None:
    async def script(connection: ScriptedConnection) -> None:
        await connection.read_head()
        async with asyncio.timeout(WAIT):
            await connection.reader.readexactly(len(FIRST_PART))
        # Returning closes the socket with the rest of the upload unread (a RST).

    async with scripted_upstream(script) as upstream, start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        body = b"b" * UPLOAD_SIZE
        with watch_logs() as logs:
            client.writer.write(
                request_bytes("POST", "/", [("Content-Length", str(UPLOAD_SIZE))]) + body
            )
            response = await client.read_response()
            line = await logs.wait_for("request")
        client.hang_up("rst")
    assert response.status == 502
    assert line["reason"].startswith("upstream_failed: closed_")


async def test_an_upstream_that_stops_reading_mid_upload_and_stays_silent_gives_504(
    start_proxy: ProxyFactory,
) -> None:
    async def script(connection: ScriptedConnection) -> None:
        await connection.read_head()
        async with asyncio.timeout(WAIT):
            await connection.reader.readexactly(len(FIRST_PART))
        # Neither reads nor answers nor closes.
        await connection.hold()

    async with (
        scripted_upstream(script) as upstream,
        start_proxy(upstream.url, upstream_timeout=0.3, drain_timeout=0.1) as proxy,
    ):
        client = await RawConnection.open(proxy.address.port)
        body = b"b" * UPLOAD_SIZE
        client.writer.write(
            request_bytes("POST", "/", [("Content-Length", str(UPLOAD_SIZE))]) + body
        )
        try:
            async with asyncio.timeout(1.5):
                response = await read_response(client.reader)
        finally:
            client.hang_up("rst")
    assert response.status == 504


async def test_a_chunked_upload_is_reframed_chunked_and_a_dropped_one_gives_502(
    start_proxy: ProxyFactory,
) -> None:
    got_first_chunk = asyncio.Event()
    received = bytearray()

    async def script(connection: ScriptedConnection) -> None:
        head = await connection.read_head()
        received.extend(head)
        async with asyncio.timeout(WAIT):
            received.extend(await connection.reader.readuntil(b"hello\r\n"))
        got_first_chunk.set()
        # Stops reading and closes with the upload unfinished.

    # Request buffering off: the body is streamed while it arrives, not read ahead.
    async with (
        scripted_upstream(script) as upstream,
        start_proxy(upstream.url, request_buffer_size=0) as proxy,
    ):
        client = await RawConnection.open(proxy.address.port)
        await client.send(
            request_bytes("POST", "/", [("Transfer-Encoding", "chunked")]) + b"5\r\nhello\r\n"
        )
        async with asyncio.timeout(WAIT):
            await got_first_chunk.wait()
        response = await client.read_response()
        await client.close()
    assert b"\r\ntransfer-encoding: chunked\r\n" in bytes(received).lower()
    assert b"content-length" not in bytes(received).lower()
    assert bytes(received).endswith(b"\r\n\r\n5\r\nhello\r\n")
    assert response.status == 502


# --- the response head --------------------------------------------------------------------------


def fields_of_size(size: int) -> bytes:
    """Header lines of about ``size`` bytes in all, each well under any per-field limit."""
    line = b"X-Filler: " + b"f" * 1000 + b"\r\n"
    return line * (size // len(line) + 1)


async def test_a_response_head_that_grows_past_the_limit_gives_502(
    start_proxy: ProxyFactory,
) -> None:
    async def script(connection: ScriptedConnection) -> None:
        await connection.read_head()
        # The head never ends: the proxy must stop collecting it once past the limit.
        await connection.send(b"HTTP/1.1 200 OK\r\n")
        filler = fields_of_size(MAX_HEAD_SIZE + 16 * 1024)
        for start in range(0, len(filler), 8192):
            await connection.send(filler[start : start + 8192])
        await connection.read_until_eof()

    async with scripted_upstream(script) as upstream, start_proxy(upstream.url) as proxy:
        response, line = await logged_exchange(proxy.address.port, request_bytes("GET", "/"))
        async with asyncio.timeout(WAIT):
            await upstream.connections[0].proxy_closed.wait()
    assert response.status == 502
    assert line["reason"] == "upstream_failed: response_head_too_large"


async def test_a_response_head_over_the_limit_sent_in_one_write_gives_502(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = answer_with(
        b"HTTP/1.1 200 OK\r\n" + fields_of_size(100 * 1024) + b"Content-Length: 2\r\n\r\nok"
    )
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("GET", "/"))
            async with asyncio.timeout(WAIT):
                # Only the status line: a forwarded head this large overruns the reader's limit.
                status_line = await client.reader.readexactly(len(b"HTTP/1.1 200 "))
            line = await logs.wait_for("request")
        client.hang_up("rst")
    assert status_line == b"HTTP/1.1 502 "
    assert line["reason"] == "upstream_failed: response_head_too_large"


async def test_a_head_under_the_limit_with_a_large_body_in_the_same_write_is_forwarded(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    """Body bytes read together with the head never count towards the head's limit."""
    body = bytes(range(256)) * 4096  # 1 MiB
    upstream.answer = answer_with(
        b"HTTP/1.1 200 OK\r\n"
        + fields_of_size(MAX_HEAD_SIZE - 8 * 1024)
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, request_bytes("GET", "/"))
    assert response.status == 200
    assert response.body == body


# --- framing of the response body ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_a_body_delimited_by_close_is_forwarded_whole_and_not_reused(
    start_proxy: ProxyFactory, version: str
) -> None:
    body = bytes(range(256)) * 2048  # 512 KiB: many reads, past where reading may pause

    async def script(connection: ScriptedConnection) -> None:
        if connection.number == 0:
            await connection.read_head()
            # RFC 9112 §6.3 rule 8: neither Content-Length nor chunked, so the close ends it.
            await connection.send(f"{version} 200 OK\r\nX-Framing: close\r\n\r\n".encode())
            for start in range(0, len(body), 65536):
                await connection.send(body[start : start + 65536])
        else:
            await serve_one_request(connection, response_bytes(200, b"next"))

    async with scripted_upstream(script) as upstream, start_proxy(upstream.url) as proxy:
        response, line = await logged_exchange(proxy.address.port, request_bytes("GET", "/"))
        after = await exchange(proxy.address.port, request_bytes("GET", "/after"))
    assert response.status == 200
    assert response.header("X-Framing") == "close"
    assert response.body == body
    assert (line["outcome"], line["status"]) == ("completed", 200)
    assert (after.status, after.body) == (200, b"next")
    assert len(upstream.connections) == 2


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            id="connection-close",
        ),
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", id="http-1.0"),
    ],
)
async def test_an_answer_that_will_not_keep_alive_closes_its_upstream_connection(
    upstream: RawUpstream, start_proxy: ProxyFactory, answer: bytes
) -> None:
    upstream.answer = answer_with(answer)
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/1"))
        first = await client.read_response()
        # The upstream does not close it itself: the proxy must.
        async with asyncio.timeout(WAIT):
            await upstream.connections[0].closed.wait()
        await client.send(request_bytes("GET", "/2"))
        second = await client.read_response()
        await client.close()
    assert (first.status, first.body, second.status, second.body) == (200, b"ok", 200, b"ok")
    assert [len(connection.requests) for connection in upstream.connections] == [1, 1]


async def test_chunked_trailers_are_dropped_and_the_connection_is_reused(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = answer_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\n\r\n"
    )
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/t", [("Connection", "close")]))
        raw = await read_until_eof(client)
        await client.close()
        again = await exchange(proxy.address.port, request_bytes("GET", "/again"))
    head, _, framed = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"x-checksum" not in raw.lower()
    assert framed.endswith(b"0\r\n\r\n")
    assert b"hello" in framed
    assert b" world" in framed
    assert again.body == b"hello world"
    assert len(upstream.connections) == 1
    assert [request.target for request in upstream.connections[0].requests] == ["/t", "/again"]


@pytest.mark.parametrize(
    "interim",
    [
        pytest.param(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
            id="103-early-hints",
        ),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="unasked-100-continue"),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.js>\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </b.js>\r\n\r\n",
            id="several",
        ),
    ],
)
async def test_interim_answers_are_skipped_and_the_connection_is_reused(
    upstream: RawUpstream, start_proxy: ProxyFactory, interim: bytes
) -> None:
    async def answer(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        if request.target == "/first":
            return interim + response_bytes(201, b"final", [("X-Final", "yes")], "Created")
        return response_bytes(200, b"second")

    upstream.answer = answer
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("POST", "/first", body=b"x"))
        async with asyncio.timeout(WAIT):
            first_head = await client.reader.readuntil(b"\r\n\r\n")
            first_body = await client.reader.readexactly(5)
        await client.send(request_bytes("GET", "/second"))
        second = await client.read_response()
        await client.close()
    assert first_head.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b"\r\nX-Final: yes\r\n" in first_head
    assert b"Link" not in first_head
    assert first_body == b"final"
    assert (second.status, second.body) == (200, b"second")
    assert len(upstream.connections) == 1


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "upstream_failed: unexpected_upgrade",
            id="101-with-upgrade-fields-to-a-plain-request",
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "upstream_failed: unexpected_upgrade",
            id="bare-101-to-a-plain-request",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nnot-a-size\r\n",
            "upstream_failed: bad_response",
            id="head-with-a-broken-chunk-in-the-same-read",
        ),
    ],
)
async def test_an_answer_that_cannot_be_forwarded_gives_502_and_closes_its_connection(
    upstream: RawUpstream, start_proxy: ProxyFactory, answer: bytes, reason: str
) -> None:
    upstream.answer = answer_with(answer)
    async with start_proxy(upstream.url) as proxy:
        response, line = await logged_exchange(proxy.address.port, request_bytes("GET", "/"))
        async with asyncio.timeout(WAIT):
            await upstream.connections[0].closed.wait()
    assert response.status == 502
    assert line["reason"] == reason


# --- HEAD ----------------------------------------------------------------------------------------


async def head_then_get(port: int) -> tuple[RawResponse, RawResponse]:
    """A HEAD and then a GET on one client connection: the answers to both."""
    client = await RawConnection.open(port)
    await client.send(request_bytes("HEAD", "/"))
    head = await client.read_response(head=True)
    await client.send(request_bytes("GET", "/next"))
    after = await client.read_response()
    await client.close()
    return head, after


async def test_body_bytes_after_an_answer_to_head_are_dropped_and_the_connection_closed(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async def answer(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        if request.method == "HEAD":
            # Wrong: an answer to HEAD has no content (RFC 9110 §9.3.2).
            return response_bytes(200, b"hello")
        return response_bytes(200, b"right")

    upstream.answer = answer
    async with start_proxy(upstream.url) as proxy:
        head, after = await head_then_get(proxy.address.port)
        async with asyncio.timeout(WAIT):
            await upstream.connections[0].closed.wait()
    assert (head.status, head.header("Content-Length")) == (200, "5")
    # Had "hello" reached the client, it would be read as the start of the next answer.
    assert (after.status, after.body) == (200, b"right")
    assert [len(connection.requests) for connection in upstream.connections] == [1, 1]


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(("Content-Length", "5"), id="content-length"),
        pytest.param(("Transfer-Encoding", "chunked"), id="chunked"),
    ],
)
async def test_a_correct_answer_to_head_leaves_the_connection_ready_for_the_next_answer(
    upstream: RawUpstream, start_proxy: ProxyFactory, framing: tuple[str, str]
) -> None:
    async def answer(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        if request.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\n%s: %s\r\n\r\n" % (
                framing[0].encode(),
                framing[1].encode(),
            )
        return response_bytes(200, b"after")

    upstream.answer = answer
    async with start_proxy(upstream.url) as proxy:
        head, after = await head_then_get(proxy.address.port)
    assert head.status == 200
    # The parser expected a body for the HEAD answer; "HTTP/1.1 200..." must not become it.
    assert (after.status, after.body) == (200, b"after")
    assert len(upstream.connections) == 1
    assert [request.method for request in upstream.connections[0].requests] == ["HEAD", "GET"]


# --- idle pooled connections ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "stray",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale", id="a-whole-answer"),
        pytest.param(b"\r\n", id="a-blank-line"),
    ],
)
async def test_bytes_on_an_idle_connection_close_it_and_the_next_request_uses_a_new_one(
    start_proxy: ProxyFactory, stray: bytes
) -> None:
    answered = asyncio.Event()
    go = asyncio.Event()

    async def script(connection: ScriptedConnection) -> None:
        if connection.number == 0:
            await serve_one_request(connection, response_bytes(200, b"first"))
            answered.set()
            async with asyncio.timeout(WAIT):
                await go.wait()
            await connection.send(stray)
            await connection.read_until_eof()
        else:
            await serve_one_request(connection, response_bytes(200, b"fresh"))

    async with scripted_upstream(script) as upstream, start_proxy(upstream.url) as proxy:
        first = await exchange(proxy.address.port, request_bytes("GET", "/1"))
        assert proxy.pool.idle_count == 1
        go.set()
        async with asyncio.timeout(WAIT):
            await upstream.connections[0].proxy_closed.wait()
        second = await exchange(proxy.address.port, request_bytes("GET", "/2"))
    assert answered.is_set()
    assert (first.body, second.body) == (b"first", b"fresh")
    assert len(upstream.connections) == 2


async def test_an_idle_upstream_connection_is_closed_after_the_keepalive_timeout(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url, upstream_keepalive_timeout=0.2) as proxy:
        response = await exchange(proxy.address.port, request_bytes("GET", "/"))
        answered = time.monotonic()
        async with asyncio.timeout(WAIT):
            await upstream.connections[0].closed.wait()
        idle_for = time.monotonic() - answered
        idle_after = proxy.pool.idle_count
    assert response.status == 200
    assert idle_for >= 0.1
    assert idle_after == 0


# --- the request head -----------------------------------------------------------------------------


async def test_an_http_1_0_request_without_host_gets_the_upstream_authority(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, b"GET /no-host HTTP/1.0\r\n\r\n")
    assert response.status == 200
    [request] = upstream.requests
    assert request.header_values("Host") == [f"{LOOPBACK}:{upstream.port}"]
    assert request.head.startswith(b"GET /no-host HTTP/1.1\r\n")


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"/caf\xc3\xa9/\xe2\x82\xac?q=\xc3\xa9", id="utf-8"),
        pytest.param(b"/raw/\xff\xfe?q=\xe9", id="not-utf-8"),
    ],
)
async def test_a_non_ascii_request_target_is_refused_before_it_reaches_the_upstream(
    upstream: RawUpstream, start_proxy: ProxyFactory, target: bytes
) -> None:
    """aiohttp's parser refuses raw bytes past ASCII in the target (RFC 3986 allows none there).

    Were they ever accepted, ``Forwarder._request_head`` would have to pass them on byte for byte
    (it re-encodes the target with surrogateescape for that reason): check it then.
    """
    async with start_proxy(upstream.url) as proxy:
        with watch_logs() as logs:
            response = await exchange(
                proxy.address.port, b"GET " + target + b" HTTP/1.1\r\nHost: test.local\r\n\r\n"
            )
            line = await logs.wait_for("request_rejected")
    assert response.status == 400
    assert line["reason"] == "bad_request_target"
    assert upstream.connections == []


# --- broken bodies -------------------------------------------------------------------------------


async def test_a_head_that_arrives_with_a_good_chunk_then_a_broken_one_gives_502(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = answer_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nnot-a-size\r\n"
    )
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/"))
        async with asyncio.timeout(WAIT):
            status_line = await client.reader.readexactly(len(b"HTTP/1.1 200 "))
        await client.close()
    assert status_line == b"HTTP/1.1 502 "
