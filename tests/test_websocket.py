"""WebSocket sessions through the proxy: a transparent tunnel that ends both sides together.

The upstream is a tiny aiohttp WebSocket server (or a raw socket, where the test must control
every byte), the proxy is started as the entry point starts it, and the client is aiohttp's
``ws_connect`` or, for the vanishing cases, a raw socket that hangs up with a FIN or a RST.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType, web
from multidict import CIMultiDictProxy

from proxy.serving.server import start_proxy as start_running_proxy
from proxy.websocket.tunnels import MAX_REFUSAL_BODY
from proxy.wire.address import HostPort
from tests.admin_support import scrape
from tests.conftest import ProxyFactory
from tests.raw_upstream import (
    RawUpstream,
    ReceivedRequest,
    UpstreamConnection,
    never_answer,
    response_bytes,
)
from tests.support import (
    HANGUP_KINDS,
    LOOPBACK,
    WAIT,
    HangupKind,
    RawConnection,
    RawResponse,
    Stack,
    request_bytes,
    running_stack,
    watch_logs,
)

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


def accept_for(key: str) -> str:
    """RFC 6455 §4.2.2: the Sec-WebSocket-Accept an upstream must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()  # noqa: S324


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2, §5.3); payloads under 126 bytes."""
    key = os.urandom(4)
    masked = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + key + masked


SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def upstream_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked server frame (RFC 6455 §5.2), any payload length."""
    size = len(payload)
    if size < 126:
        return bytes([0x80 | opcode, size]) + payload
    if size < 65536:
        return bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big") + payload
    return bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big") + payload


@contextlib.asynccontextmanager
async def serving(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    unix_path: Path | None = None,
) -> AsyncIterator[str]:
    """A raw upstream (TCP, or a unix socket at ``unix_path``) that runs ``handle`` for each
    connection, then closes it; yields its URL. On the way out it waits (bounded) for every
    ``handle`` to end.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            with contextlib.suppress(ConnectionError):
                await handle(reader, writer)
        finally:
            writer.close()

    if unix_path is not None:
        server = await asyncio.start_unix_server(serve, path=str(unix_path))
        url = f"unix:{unix_path}"
    else:
        server = await asyncio.start_server(serve, LOOPBACK, 0)
        url = f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
    try:
        yield url
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*tasks)
    finally:
        server.close()
        await server.wait_closed()


def handshake(target: str = "/ws", extra: list[tuple[str, str]] | None = None) -> bytes:
    return request_bytes(
        "GET",
        target,
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
            *(extra or []),
        ],
    )


async def handshake_answered(port: int) -> tuple[RawConnection, RawResponse, dict[str, Any]]:
    """A client that sent a handshake and read the answer (not a 101), with its canonical line."""
    client = await RawConnection.open(port)
    with watch_logs() as logs:
        await client.send(handshake())
        response = await client.read_response()
        line = await logs.wait_for("request")
    return client, response, dict(line)


class WebSocketUpstream:
    """An aiohttp WebSocket server that echoes and obeys a few commands (see ``serve``)."""

    def __init__(self) -> None:
        self.handshakes: list[CIMultiDictProxy[str]] = []
        self.close_codes: list[int | None] = []
        self.received: list[tuple[WSMsgType, Any]] = []
        self.opened = asyncio.Event()
        self.ended = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ws", self.serve)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, LOOPBACK, 0).start()
        self.port = self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        self.handshakes.append(request.headers)
        ws = web.WebSocketResponse(protocols=("v1.chat",), autoping=False)
        await ws.prepare(request)
        self.opened.set()
        try:
            async for message in ws:
                self.received.append((message.type, message.data))
                await self._answer(ws, message.type, message.data)
        finally:
            self.close_codes.append(ws.close_code)
            self.ended.set()
        return ws

    async def _answer(self, ws: web.WebSocketResponse, kind: WSMsgType, data: Any) -> None:
        if kind is WSMsgType.PING:
            await ws.pong(data)
        elif kind is WSMsgType.PONG:
            await ws.send_str(f"pong {data.decode()}")
        elif kind is WSMsgType.BINARY:
            await ws.send_bytes(data)
        elif data == "ping me":
            await ws.ping(b"from upstream")
        elif data.startswith("close "):
            await ws.close(code=int(data.split()[1]), message=b"upstream says bye")
        else:
            await ws.send_str(data)


@pytest.fixture
async def ws_upstream() -> AsyncIterator[WebSocketUpstream]:
    server = WebSocketUpstream()
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession() as client_session:
        yield client_session


async def test_handshake_reaches_the_upstream_whole_and_its_101_reaches_the_client(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async def switch(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        # A made-up Accept proves the proxy relays the upstream's and computes none itself.
        return response_bytes(
            101,
            headers=[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade, X-Hop"),
                ("X-Hop", "stripped"),
                ("Keep-Alive", "timeout=5"),
                ("Sec-WebSocket-Accept", "made-up-by-the-upstream="),
                ("Sec-WebSocket-Protocol", "v1.chat"),
                ("Sec-WebSocket-Extensions", "permessage-deflate"),
                ("X-Upstream", "kept"),
                ("Content-Length", "0"),
            ],
            reason="Switching Protocols",
        )

    upstream.answer = switch
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        extra = [
            ("Connection", "X-Secret"),
            ("X-Secret", "for-the-proxy-only"),
            ("Sec-WebSocket-Protocol", "v2.chat, v1.chat"),
            ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
            ("X-Request-ID", "ws-handshake"),
        ]
        await client.send(handshake("/ws/a%2Fb?x=1&y=%20", extra))
        answer = await client.read_response(head=True)
        [request] = await upstream.wait_requests(1)
        await client.close()

    assert (answer.status, answer.reason) == (101, "Switching Protocols")
    assert answer.header("Sec-WebSocket-Accept") == "made-up-by-the-upstream="
    assert answer.header("Sec-WebSocket-Protocol") == "v1.chat"
    assert answer.header("Sec-WebSocket-Extensions") == "permessage-deflate"
    assert answer.header("X-Upstream") == "kept"
    assert answer.header("Upgrade") == "websocket"
    assert answer.header("Connection") == "Upgrade"
    assert answer.header("X-Hop") is None
    assert answer.header("Keep-Alive") is None

    assert request.target == "/ws/a%2Fb?x=1&y=%20"
    assert request.header("Sec-WebSocket-Key") == "dGhlIHNhbXBsZSBub25jZQ=="
    assert request.header("Sec-WebSocket-Version") == "13"
    assert request.header("Sec-WebSocket-Protocol") == "v2.chat, v1.chat"
    assert request.header("Sec-WebSocket-Extensions") == (
        "permessage-deflate; client_max_window_bits"
    )
    assert request.header("Upgrade") == "websocket"
    assert request.header("Connection") == "Upgrade"
    assert request.header("X-Secret") is None
    assert request.header("X-Forwarded-For") == LOOPBACK
    assert request.header("X-Request-ID") == "ws-handshake"
    assert request.header("Host") == "test.local"


async def test_subprotocol_and_compression_are_negotiated_end_to_end(
    ws_upstream: WebSocketUpstream, start_proxy: ProxyFactory, session: ClientSession
) -> None:
    async with start_proxy(ws_upstream.url) as proxy:
        with watch_logs() as logs:
            async with session.ws_connect(
                f"http://{LOOPBACK}:{proxy.address.port}/ws",
                protocols=("v2.chat", "v1.chat"),
                compress=15,
            ) as ws:
                await ws.send_str("compressed both ways " * 100)
                echoed = await ws.receive(timeout=WAIT)
                await ws.close()
            line = await logs.wait_for("request")

    assert ws.protocol == "v1.chat"
    # permessage-deflate (RFC 7692) was agreed by the two endpoints through the tunnel.
    assert ws.compress == 15
    assert "permessage-deflate" in ws_upstream.handshakes[0]["Sec-WebSocket-Extensions"]
    assert echoed.data == "compressed both ways " * 100
    assert (line["outcome"], line["reason"]) == ("completed", "client_close_1000")


async def test_text_binary_ping_pong_and_close_code_flow_both_ways(
    ws_upstream: WebSocketUpstream, start_proxy: ProxyFactory, session: ClientSession
) -> None:
    payload = os.urandom(150 * 1024)
    async with start_proxy(ws_upstream.url) as proxy:
        with watch_logs() as logs:
            async with session.ws_connect(
                f"http://{LOOPBACK}:{proxy.address.port}/ws", autoping=False
            ) as ws:
                await ws.send_str("hello")
                text = await ws.receive(timeout=WAIT)
                await ws.send_bytes(payload)
                binary = await ws.receive(timeout=WAIT)
                await ws.ping(b"from client")
                client_pong = await ws.receive(timeout=WAIT)
                await ws.send_str("ping me")
                upstream_ping = await ws.receive(timeout=WAIT)
                await ws.pong(upstream_ping.data)
                pong_seen = await ws.receive(timeout=WAIT)
                await ws.close(code=4000, message=b"client says bye")
            async with asyncio.timeout(WAIT):
                await ws_upstream.ended.wait()
            line = await logs.wait_for("request")

    assert (text.type, text.data) == (WSMsgType.TEXT, "hello")
    assert binary.type is WSMsgType.BINARY
    assert binary.data == payload
    assert (client_pong.type, client_pong.data) == (WSMsgType.PONG, b"from client")
    assert (upstream_ping.type, upstream_ping.data) == (WSMsgType.PING, b"from upstream")
    assert pong_seen.data == "pong from upstream"
    assert ws_upstream.close_codes == [4000]
    assert (line["status"], line["outcome"], line["reason"]) == (
        101,
        "completed",
        "client_close_4000",
    )
    assert line["upstream_status"] == 101


async def test_a_close_from_the_upstream_reaches_the_client_with_its_code(
    ws_upstream: WebSocketUpstream, start_proxy: ProxyFactory, session: ClientSession
) -> None:
    async with start_proxy(ws_upstream.url) as proxy:
        with watch_logs() as logs:
            async with session.ws_connect(f"http://{LOOPBACK}:{proxy.address.port}/ws") as ws:
                await ws.send_str("close 4001")
                closing = await ws.receive(timeout=WAIT)
            line = await logs.wait_for("request")

    assert (closing.type, closing.data, closing.extra) == (
        WSMsgType.CLOSE,
        4001,
        "upstream says bye",
    )
    assert ws.close_code == 4001
    assert (line["outcome"], line["reason"]) == ("completed", "upstream_close_4001")


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_a_vanished_client_closes_the_upstream_with_going_away(
    ws_upstream: WebSocketUpstream, start_proxy: ProxyFactory, kind: HangupKind
) -> None:
    async with start_proxy(ws_upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(handshake(extra=[("X-Request-ID", f"ws-vanish-{kind}")]))
            answer = await client.read_response(head=True)
            await client.send(client_frame(0x1, b"still here"))
            async with asyncio.timeout(WAIT):
                await client.reader.readuntil(b"still here")
            client.hang_up(kind)
            async with asyncio.timeout(WAIT):
                await ws_upstream.ended.wait()
            line = await logs.wait_for("request")

    assert answer.header("Sec-WebSocket-Accept") == accept_for("dGhlIHNhbXBsZSBub25jZQ==")
    # RFC 6455 §7.4.1: the proxy closed on the client's behalf with 1001, "going away".
    assert ws_upstream.close_codes == [1001]
    assert (line["status"], line["outcome"], line["reason"]) == (
        499,
        "client_hangup",
        "client_vanished",
    )
    assert line["request_id"] == f"ws-vanish-{kind}"
    assert line["upstream_closed"] is True
    assert (line["policy_rule"], line["policy_action"]) == ("websocket", "cancel")
    assert line["phase"] == "streaming_response"


async def test_a_client_that_vanishes_mid_frame_gets_no_close_frame_forged(
    ws_upstream: WebSocketUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(ws_upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(handshake())
        await client.read_response(head=True)
        # The header announces 100 payload bytes; only 10 follow before the RST. A Close frame
        # appended now would be read as payload, so the proxy must only close the socket.
        await client.send(bytes([0x81, 0x80 | 100]) + os.urandom(4) + b"x" * 10)
        async with asyncio.timeout(WAIT):
            await ws_upstream.opened.wait()
        client.hang_up("rst")
        async with asyncio.timeout(WAIT):
            await ws_upstream.ended.wait()

    assert ws_upstream.close_codes == [1006]  # aiohttp: the connection ended without a Close


async def test_a_vanished_upstream_closes_the_client_with_1011(
    start_proxy: ProxyFactory, session: ClientSession
) -> None:
    async def switch_then_vanish(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept_for(key)}\r\n\r\n".encode()
        )
        await reader.read(1)  # the client's first frame: now vanish, with no Close frame
        writer.close()

    server = await asyncio.start_server(switch_then_vanish, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    async with start_proxy(f"http://{LOOPBACK}:{port}") as proxy:
        with watch_logs() as logs:
            async with session.ws_connect(f"http://{LOOPBACK}:{proxy.address.port}/ws") as ws:
                await ws.send_str("anyone there?")
                closing = await ws.receive(timeout=WAIT)
            line = await logs.wait_for("request")
    server.close()
    await server.wait_closed()

    # RFC 6455 §7.4.1: 1011, the server side failed.
    assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1011)
    assert (line["status"], line["outcome"], line["reason"]) == (
        101,
        "upstream_error",
        "upstream_vanished",
    )


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        pytest.param(
            response_bytes(403, b"no websockets for you", reason="Forbidden"),
            403,
            b"no websockets for you",
            id="403-content-length",
        ),
        pytest.param(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n",
            404,
            b"nope",
            id="404-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nv13\r\n0\r\nX-Trailer: t\r\n\r\n",
            426,
            b"v13",
            id="426-chunked-with-extension-and-trailer",
        ),
        pytest.param(b"SSH-2.0-OpenSSH\r\n\r\n", 502, None, id="garbage-is-502"),
    ],
)
async def test_an_upstream_refusal_is_relayed_as_an_ordinary_response(
    upstream: RawUpstream,
    start_proxy: ProxyFactory,
    answer: bytes,
    status: int,
    body: bytes | None,
) -> None:
    async def refuse(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        return answer

    upstream.answer = refuse
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(handshake())
        response = await client.read_response()
        await client.close()

    assert response.status == status
    if body is not None:
        assert response.body == body
    assert response.header("Connection") == "close"


@pytest.mark.parametrize(
    ("method", "headers", "body"),
    [
        pytest.param(
            "GET",
            [
                ("Upgrade", "h2c"),
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
            b"",
            id="h2c",
        ),
        pytest.param(
            "GET", [("Upgrade", "TLS/1.2"), ("Connection", "Upgrade")], b"", id="tls-upgrade"
        ),
        pytest.param(
            "POST",
            [("Upgrade", "websocket"), ("Connection", "Upgrade")],
            b"body",
            id="websocket-on-post",
        ),
    ],
)
async def test_other_upgrades_are_forwarded_as_plain_requests_without_upgrade(
    upstream: RawUpstream,
    start_proxy: ProxyFactory,
    method: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes(method, "/plain", headers, body))
        response = await client.read_response()
        [request] = await upstream.wait_requests(1)
        await client.close()

    assert (response.status, response.body) == (200, b"ok")
    names = {name.lower() for name in request.header_names}
    assert not names & {"upgrade", "connection", "http2-settings"}
    assert request.body == body


async def test_draining_closes_open_websockets_with_going_away_at_once(
    ws_upstream: WebSocketUpstream, proxy_config: Any, session: ClientSession
) -> None:
    proxy = await start_running_proxy(proxy_config(ws_upstream.url, drain_timeout=30.0))
    with watch_logs() as logs:
        async with session.ws_connect(f"http://{LOOPBACK}:{proxy.address.port}/ws") as ws:
            await ws.send_str("hello")
            await ws.receive(timeout=WAIT)
            # Far below the 30 s drain timeout: the session is closed at the start of the drain.
            async with asyncio.timeout(WAIT):
                await proxy.stop(30.0)
            closing = await ws.receive(timeout=WAIT)
        async with asyncio.timeout(WAIT):
            await ws_upstream.ended.wait()
        line = await logs.wait_for("request")

    assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1001)
    assert ws_upstream.close_codes == [1001]
    assert (line["outcome"], line["reason"]) == ("completed", "proxy_going_away")


async def test_interim_answers_before_the_101_are_skipped_and_the_tunnel_opens(
    start_proxy: ProxyFactory,
) -> None:
    """RFC 9110 §15.2: a client must take 1xx answers before the final one; a 100 or 103 ahead of
    the 101 is none of this client's business, and the 101 after it still opens the tunnel."""

    async def hint_then_switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n"
            + SWITCH
            + upstream_frame(0x1, b"first")
        )
        await writer.drain()
        await reader.read()  # until the proxy closes

    async with serving(hint_then_switch) as url, start_proxy(url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(handshake())
        async with asyncio.timeout(WAIT):
            first_head = await client.reader.readuntil(b"\r\n\r\n")
            first = await client.reader.readexactly(len(upstream_frame(0x1, b"first")))
        await client.close()

    assert first_head.startswith(b"HTTP/1.1 101 ")
    assert first == upstream_frame(0x1, b"first")


async def test_bytes_that_follow_the_101_in_the_same_read_reach_the_client_first_and_in_order(
    start_proxy: ProxyFactory,
) -> None:
    """The upstream's first frames may share a segment with its 101: they are the tunnel's."""
    big = upstream_frame(0x2, os.urandom(200 * 1024))
    later = asyncio.Event()

    async def switch_and_talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(SWITCH + upstream_frame(0x1, b"first") + big)
        await writer.drain()
        await later.wait()
        writer.write(upstream_frame(0x1, b"later"))
        await writer.drain()
        await reader.read()  # until the proxy closes

    async with serving(switch_and_talk) as url, start_proxy(url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(handshake())
        answer = await client.read_response(head=True)
        async with asyncio.timeout(WAIT):
            first = await client.reader.readexactly(len(upstream_frame(0x1, b"first")))
            received_big = await client.reader.readexactly(len(big))
            later.set()
            last = await client.reader.readexactly(len(upstream_frame(0x1, b"later")))
        await client.close()

    assert answer.status == 101
    assert first == upstream_frame(0x1, b"first")
    assert received_big == big
    assert last == upstream_frame(0x1, b"later")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param(b"SSH-2.0-OpenSSH\r\n\r\n", "upstream_failed: bad_response", id="not-http"),
        pytest.param(b"HTTP/2 101\r\n\r\n", "upstream_failed: bad_response", id="http-2"),
        pytest.param(
            b"HTTP/1.1 101 OK\r\nUpgrade : websocket\r\nConnection: Upgrade\r\n\r\n",
            "upstream_failed: bad_response",
            id="space-before-colon",
        ),
        pytest.param(
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nA: b\r\n folded\r\n"
            b"Connection: Upgrade\r\n\r\n",
            "upstream_failed: bad_response",
            id="obs-fold",
        ),
        pytest.param(
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nA: b\rc\r\nConnection: Upgrade\r\n\r\n",
            "upstream_failed: bad_response",
            id="bare-cr",
        ),
        pytest.param(
            # RFC 9110 §7.8 and RFC 6455 §4.1: a 101 names the upgrade in Connection too.
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "upstream_failed: bad_response",
            id="101-without-connection-upgrade",
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            "upstream_failed: unexpected_upgrade",
            id="101-to-h2c",
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            + b"X-Filler: "
            + b"x" * (70 * 1024)
            + b"\r\n\r\n",
            "upstream_failed: response_head_too_large",
            id="head-over-64-kib",
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n",
            "upstream_failed: closed_before_answer",
            id="unterminated",
        ),
        pytest.param(
            response_bytes(403, b"x" * (MAX_REFUSAL_BODY + 1)),
            "upstream_failed: refusal_too_large",
            id="refusal-over-1-mib",
        ),
    ],
)
async def test_an_answer_that_cannot_be_relayed_gives_502_and_closes_both_connections(
    start_proxy: ProxyFactory, answer: bytes, reason: str
) -> None:
    upstream_closed = asyncio.Event()

    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        if not answer.endswith(b"\r\n\r\n"):
            writer.close()  # an unterminated head, or a refusal: nothing more will come
        await reader.read()
        upstream_closed.set()

    async with serving(answer_then_close) as url, start_proxy(url) as proxy:
        client, response, line = await handshake_answered(proxy.address.port)
        async with asyncio.timeout(WAIT):
            await upstream_closed.wait()
            assert await client.reader.read() == b""
        await client.close()

    assert response.status == 502
    assert response.header("Connection") == "close"
    assert (line["outcome"], line["reason"]) == ("upstream_error", reason)


async def test_an_upstream_that_does_not_answer_the_handshake_in_time_gives_504(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = never_answer
    async with start_proxy(upstream.url, upstream_timeout=0.2) as proxy:
        client, response, line = await handshake_answered(proxy.address.port)
        async with asyncio.timeout(WAIT):
            await upstream.connections[0].closed.wait()
        await client.close()

    assert response.status == 504
    assert (line["outcome"], line["reason"]) == ("upstream_timeout", "upstream_read_timeout")


async def test_a_refusal_whose_body_ends_with_the_connection_is_relayed_whole(
    start_proxy: ProxyFactory,
) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        # RFC 9112 §6.3 rule 8: neither Content-Length nor chunked, so the close ends the body.
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\r\nlog in")
        await writer.drain()

    async with serving(refuse) as url, start_proxy(url) as proxy:
        client, response, line = await handshake_answered(proxy.address.port)
        await client.close()

    assert (response.status, response.body) == (401, b"log in")
    assert response.header("WWW-Authenticate") == "Bearer"
    assert (line["status"], line["outcome"], line["upstream_status"]) == (401, "completed", 401)


async def test_an_http10_101_without_a_reason_is_tunnelled_over_a_unix_socket(
    tmp_path: Path, start_proxy: ProxyFactory
) -> None:
    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 101\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
        writer.write(upstream_frame(0x1, await reader.readexactly(2 + 4 + 5)))
        await writer.drain()
        await reader.read()

    async with serving(switch, tmp_path / "ws.sock") as url, start_proxy(url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(handshake())
        answer = await client.read_response(head=True)
        frame = client_frame(0x1, b"hello")
        await client.send(frame)
        async with asyncio.timeout(WAIT):
            echoed = await client.reader.readexactly(2 + len(frame))
        await client.close()

    assert (answer.status, answer.reason) == (101, "Switching Protocols")
    assert echoed == upstream_frame(0x1, frame)


# --- end to end: the real console scripts --------------------------------------------------------


@pytest.fixture(params=["h11", "httptools"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """``hangup-demo-backend`` behind ``hangup-proxy``."""
    async with running_stack(("--port", "0", "--http", request.param)) as started:
        yield started
    assert not any("Traceback" in line for line in started.backend.raw_lines)


async def backend_stats(port: int) -> dict[str, int]:
    client = await RawConnection.open(port)
    await client.send(request_bytes("GET", "/stats"))
    response = await client.read_response()
    await client.close()
    stats: dict[str, int] = response.json()
    return stats


async def test_the_demo_backend_echoes_through_the_proxy_and_counts_a_clean_close(
    stack: Stack, session: ClientSession
) -> None:
    backend, backend_port, port = stack.backend, stack.backend_port, stack.port
    async with session.ws_connect(
        f"http://{LOOPBACK}:{port}/ws/echo",
        protocols=("demo.v1",),
        headers={"X-Request-ID": "e2e-ws-echo"},
    ) as ws:
        await ws.send_str("hello")
        text = await ws.receive(timeout=WAIT)
        await ws.send_bytes(b"\x00" * 100_000)
        binary = await ws.receive(timeout=WAIT)
        await ws.close()
    closed = await backend.wait_for_event("websocket_closed", request_id="e2e-ws-echo")

    assert ws.protocol == "demo.v1"
    assert (text.data, len(binary.data)) == ("hello", 100_000)
    assert closed["code"] == 1000
    stats = await backend_stats(backend_port)
    assert (stats["ws_opened"], stats["ws_closed"], stats["ws_cancelled"]) == (1, 1, 0)


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_the_demo_backend_websocket_handler_ends_when_the_client_vanishes(
    stack: Stack, kind: HangupKind
) -> None:
    backend, backend_port, port = stack.backend, stack.backend_port, stack.port
    request_id = f"e2e-ws-vanish-{kind}"
    client = await RawConnection.open(port)
    await client.send(handshake("/ws/echo", [("X-Request-ID", request_id)]))
    answer = await client.read_response(head=True)
    await client.send(client_frame(0x1, b"sleep 30"))
    await backend.wait_for_event("websocket_work_started", request_id=request_id)
    client.hang_up(kind)

    cancelled = await backend.wait_for_event("websocket_cancelled", request_id=request_id)
    work = await backend.wait_for_event("websocket_work_cancelled", request_id=request_id)
    line = await stack.proxy.wait_for_event("request", request_id=request_id)

    assert answer.status == 101
    assert answer.header("Sec-WebSocket-Accept") == accept_for("dGhlIHNhbXBsZSBub25jZQ==")
    assert cancelled["code"] == 1001  # the proxy's Close on the vanished client's behalf
    assert work["tasks"] == 1
    assert (line["status"], line["outcome"], line["upstream_closed"]) == (
        499,
        "client_hangup",
        True,
    )
    stats = await backend_stats(backend_port)
    assert (stats["ws_opened"], stats["ws_closed"], stats["ws_cancelled"]) == (1, 0, 1)


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_a_client_that_vanishes_before_the_101_closes_the_upstream_connection(
    upstream: RawUpstream, start_proxy: ProxyFactory, kind: HangupKind
) -> None:
    upstream.answer = never_answer
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(handshake(extra=[("X-Request-ID", "ws-early")]))
            await upstream.wait_requests(1)
            client.hang_up(kind)
            async with asyncio.timeout(WAIT):
                await upstream.connections[0].closed.wait()
            line = await logs.wait_for("request")

    assert (line["status"], line["outcome"], line["phase"], line["upstream_closed"]) == (
        499,
        "client_hangup",
        "awaiting_upstream_headers",
        True,
    )


async def test_an_unreachable_upstream_answers_the_handshake_with_502(
    start_proxy: ProxyFactory,
) -> None:
    refused = RawUpstream()
    await refused.start()
    await refused.close()  # the port is now closed: connecting is refused
    async with start_proxy(refused.url) as proxy:
        client, response, line = await handshake_answered(proxy.address.port)
        await client.close()

    assert response.status == 502
    assert (line["outcome"], line["reason"]) == ("upstream_error", "upstream_connect_failed")


async def test_an_open_tunnel_holds_an_upstream_slot_until_it_closes(
    ws_upstream: WebSocketUpstream, start_proxy: ProxyFactory, session: ClientSession
) -> None:
    """A tunnel keeps its upstream connection open, so --upstream-max-connections counts it."""
    async with start_proxy(ws_upstream.url, upstream_max_connections=1) as proxy:
        url = f"http://{LOOPBACK}:{proxy.address.port}"
        with watch_logs() as logs:
            async with session.ws_connect(f"{url}/ws") as ws:
                await ws.send_str("hello")
                assert (await ws.receive(timeout=WAIT)).data == "hello"
                async with asyncio.timeout(WAIT), session.get(f"{url}/plain") as refused:
                    assert refused.status == 503
                await ws.close()
            # The tunnel's line is written as its handler returns, giving the slot back.
            await logs.wait_for("request", status=101)
        async with asyncio.timeout(WAIT), session.get(f"{url}/plain") as after:
            # The WebSocket upstream has no /plain: its own 404 proves the request got through.
            assert after.status == 404


async def test_a_session_has_metrics_of_its_own_and_is_not_a_request_in_flight(
    ws_upstream: WebSocketUpstream, start_proxy: ProxyFactory, session: ClientSession
) -> None:
    """Hours-long sessions must not skew the request-duration histogram or the in-flight gauge."""
    async with start_proxy(ws_upstream.url, admin=HostPort(LOOPBACK, 0)) as proxy:
        assert proxy.admin_address is not None
        admin_port = proxy.admin_address.port
        with watch_logs() as logs:
            async with session.ws_connect(f"http://{LOOPBACK}:{proxy.address.port}/ws") as ws:
                await ws.send_str("hello")
                assert (await ws.receive(timeout=WAIT)).data == "hello"
                during = await scrape(admin_port)
                await ws.close()
            await logs.wait_for("request", status=101)
        after = await scrape(admin_port)

    assert during.value("hangup_websocket_sessions") == 1
    assert during.value("hangup_active_requests") == 0
    assert after.value("hangup_websocket_sessions") == 0
    assert after.value("hangup_websocket_session_duration_seconds_count") == 1
    assert after.value("hangup_request_duration_seconds_count") == 0
    assert after.value("hangup_requests_total", outcome="completed") == 1
