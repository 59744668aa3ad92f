"""Hang-ups: the upstream connection that carried a request is closed when its client leaves."""

from __future__ import annotations

import asyncio
import socket

import pytest

from proxy.edge.frontend import GateRequestHandler
from proxy.policy.methods import CancelPolicy
from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream, ReceivedRequest, UpstreamConnection, response_bytes
from tests.support import (
    HANGUP_KINDS,
    LOOPBACK,
    WAIT,
    HangupKind,
    RawConnection,
    request_bytes,
    watch_logs,
)


class HeldAnswer:
    """An upstream answer that waits until the test releases it (a slow backend)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        await self.release.wait()
        request_id = request.header("x-request-id") or ""
        return response_bytes(200, request_id.encode())


@pytest.fixture
def held() -> HeldAnswer:
    return HeldAnswer()


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_upstream_connection_closes_when_client_hangs_up_awaiting_headers(
    upstream: RawUpstream, held: HeldAnswer, start_proxy: ProxyFactory, kind: HangupKind
) -> None:
    upstream.answer = held
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("GET", "/slow", [("X-Request-ID", "hang-1")]))
            await upstream.wait_requests(1)
            client.hang_up(kind)
            async with asyncio.timeout(WAIT):
                await upstream.connections[0].closed.wait()
            line = await logs.wait_for("request")
    assert len(logs.events("request")) == 1
    assert line["status"] == 499
    assert line["outcome"] == "client_hangup"
    assert line["phase"] == "awaiting_upstream_headers"
    assert line["request_id"] == "hang-1"
    assert line["log_level"] == "info"
    assert line["upstream_closed"] is True


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_upstream_connection_closes_when_client_hangs_up_while_response_streams(
    upstream: RawUpstream, start_proxy: ProxyFactory, kind: HangupKind
) -> None:
    more = asyncio.Event()

    async def streaming(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        return response_bytes(200, b"first", [("Transfer-Encoding", "chunked")])[:-5] + (
            b"5\r\nfirst\r\n"
        )

    upstream.answer = streaming
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("GET", "/stream"))
            async with asyncio.timeout(WAIT):
                await client.reader.readuntil(b"first")
            client.hang_up(kind)
            async with asyncio.timeout(WAIT):
                await upstream.connections[0].closed.wait()
            line = await logs.wait_for("request")
    assert not more.is_set()
    assert len(logs.events("request")) == 1
    assert (line["status"], line["outcome"], line["phase"]) == (
        499,
        "client_hangup",
        "streaming_response",
    )


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_upstream_connection_closes_when_client_hangs_up_mid_upload(
    upstream: RawUpstream, start_proxy: ProxyFactory, kind: HangupKind
) -> None:
    async with start_proxy(upstream.url, cancel_policy=CancelPolicy(None)) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            head = request_bytes("PUT", "/upload", [("Content-Length", "100000")])
            await client.send(head + b"x" * 1000)
            async with asyncio.timeout(WAIT):
                await upstream.wait_until(lambda: len(upstream.connections) == 1)
                await upstream.connections[0].first_byte.wait()
            client.hang_up(kind)
            async with asyncio.timeout(WAIT):
                await upstream.connections[0].closed.wait()
            line = await logs.wait_for("request")
    assert upstream.requests == []  # it never arrived whole
    assert len(logs.events("request")) == 1
    assert (line["status"], line["outcome"], line["phase"]) == (
        499,
        "client_hangup",
        "request_body",
    )


async def test_only_the_hung_up_requests_lose_their_upstream_connections(
    upstream: RawUpstream, held: HeldAnswer, start_proxy: ProxyFactory
) -> None:
    upstream.answer = held
    async with start_proxy(upstream.url) as proxy:
        clients = [await RawConnection.open(proxy.address.port) for _ in range(100)]
        for number, client in enumerate(clients):
            await client.send(request_bytes("GET", "/slow", [("X-Request-ID", f"r{number}")]))
        await upstream.wait_requests(100)
        by_id = {
            connection.requests[0].header("x-request-id"): connection
            for connection in upstream.connections
        }
        leaving, staying = clients[::2], clients[1::2]
        for number, client in enumerate(leaving):
            client.hang_up("rst" if number % 2 else "fin")
        await upstream.wait_until(lambda: upstream.closed_count() == 50)
        closed_ids = {rid for rid, connection in by_id.items() if connection.closed.is_set()}
        assert closed_ids == {f"r{number}" for number in range(0, 100, 2)}
        held.release.set()
        responses = await asyncio.gather(*(client.read_response() for client in staying))
        assert [response.body.decode() for response in responses] == [
            f"r{number}" for number in range(1, 100, 2)
        ]
        assert all(response.status == 200 for response in responses)
        for client in staying:
            await client.close()


async def test_a_write_is_carried_to_the_end_and_its_answer_discarded(
    upstream: RawUpstream, held: HeldAnswer, start_proxy: ProxyFactory
) -> None:
    upstream.answer = held
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("POST", "/write", [("X-Request-ID", "w1")], b"data"))
            [request] = await upstream.wait_requests(1)
            client.hang_up("rst")
            held.release.set()
            line = await logs.wait_for("request")
        # The answer was read whole, so the connection went back to the pool, still open.
        assert not upstream.connections[0].closed.is_set()
    assert request.body == b"data"
    assert len(upstream.requests) == 1  # once, never retried
    assert len(logs.events("request")) == 1
    assert (line["status"], line["outcome"], line["upstream_status"]) == (
        499,
        "client_hangup",
        200,
    )
    assert line["cancelled"] is False


async def test_the_upstream_is_cut_from_connection_lost_and_only_while_the_exchange_runs(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    """The synchronous cut is armed for exactly one exchange: a later hang-up on the same client
    connection must never close a pooled upstream connection that now serves someone else."""
    release_first = asyncio.Event()
    never = asyncio.Event()

    async def answer(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        await (release_first if request.target == "/first" else never).wait()
        return response_bytes(200, b"ok")

    upstream.answer = answer
    async with start_proxy(upstream.url) as proxy:
        assert proxy.runner.server is not None
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/first"))
        await upstream.wait_requests(1)
        [handler] = proxy.runner.server.connections
        assert isinstance(handler, GateRequestHandler)
        assert len(handler.hangup_hooks) == 1  # armed while the exchange waits
        release_first.set()
        assert (await client.read_response()).status == 200
        assert handler.hangup_hooks == []  # disarmed once it ended
        with watch_logs() as logs:
            await client.send(request_bytes("GET", "/second"))
            await upstream.wait_requests(2)
            client.hang_up("rst")
            line = await logs.wait_for("request")
        await upstream.wait_until(lambda: upstream.closed_count() == 1)
    assert line["upstream_closed"] is True
    # The second request reused the pooled connection, and only its hang-up closed it.
    assert len(upstream.connections) == 1


def _saw_end(peer: socket.socket) -> bool:
    """Whether ``peer``'s connection has ended (FIN or RST) by now, without waiting for it."""
    try:
        return peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


_WEBSOCKET_HANDSHAKE_FIELDS = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


@pytest.mark.parametrize(
    "request_head",
    [
        pytest.param(request_bytes("GET", "/slow"), id="request"),
        pytest.param(
            request_bytes("GET", "/ws", _WEBSOCKET_HANDSHAKE_FIELDS), id="websocket-handshake"
        ),
    ],
)
async def test_a_client_fin_ends_the_upstream_connection_within_the_read_that_saw_it(
    start_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch, request_head: bytes
) -> None:
    """A FIN is acted on in ``eof_received``, inside the read that saw it, and the upstream
    socket is shut down there and then. Both loops otherwise wait for queued callbacks: the
    client's ``connection_lost`` and the upstream socket's close each come a ``call_soon`` later,
    and under load each of those waits was most of a loop turn (benchmarks/)."""
    loop = asyncio.get_running_loop()
    with socket.create_server((LOOPBACK, 0)) as listener:
        listener.setblocking(False)
        async with start_proxy(f"http://{LOOPBACK}:{listener.getsockname()[1]}") as proxy:
            assert proxy.runner.server is not None
            client = await RawConnection.open(proxy.address.port)
            await client.send(request_head)
            async with asyncio.timeout(WAIT):
                peer, _ = await loop.sock_accept(listener)
            with peer:
                received = b""
                async with asyncio.timeout(WAIT):
                    while b"\r\n\r\n" not in received:
                        received += await loop.sock_recv(peer, 65536)
                [handler] = proxy.runner.server.connections
                assert isinstance(handler, GateRequestHandler)
                ended_at_eof: list[bool] = []
                eof_received = handler.eof_received

                def watched_eof_received() -> None:
                    eof_received()
                    ended_at_eof.append(_saw_end(peer))

                monkeypatch.setattr(handler, "eof_received", watched_eof_received)
                with watch_logs() as logs:
                    client.hang_up("fin")
                    line = await logs.wait_for("request")
    assert ended_at_eof == [True]
    assert (line["status"], line["upstream_closed"]) == (499, True)
