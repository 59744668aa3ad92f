"""Graceful drain of the real ``hangup-proxy`` process on real signals.

On SIGTERM (or SIGINT) readiness goes 503, the listener closes, idle keep-alive connections are
closed, in-flight requests run to their end (bounded by ``--drain-timeout``) and the process exits
0; a second signal exits at once with status 1.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.admin_support import admin_get
from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream, SlowPathHeld
from tests.support import (
    LOOPBACK,
    WAIT,
    RawConnection,
    ScriptProcess,
    proxy_argv,
    request_bytes,
    watch_logs,
)


@asynccontextmanager
async def proxy_process(
    upstream: RawUpstream, drain_timeout: float
) -> AsyncIterator[tuple[ScriptProcess, int, int]]:
    """The console script with an admin listener; yields it with its client and admin ports."""
    argv = proxy_argv(upstream.url, "--drain-timeout", str(drain_timeout))
    process = await ScriptProcess.start(argv)
    try:
        port = await process.listening_port("proxy_listening")
        admin = await process.listening_port("admin_listening")
        yield process, port, admin
    finally:
        await process.stop()


async def wait_closed_by_peer(connection: RawConnection) -> None:
    async with asyncio.timeout(WAIT):
        assert await connection.reader.read() == b""


async def start_slow_request(port: int, upstream: RawUpstream) -> RawConnection:
    slow = await RawConnection.open(port)
    await slow.send(request_bytes("GET", "/slow", [("X-Request-ID", "slow-1")]))
    await upstream.wait_until(lambda: any(r.target == "/slow" for r in upstream.requests))
    return slow


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_in_flight_requests_refuses_new_ones_and_exits_0(
    upstream: RawUpstream, signum: signal.Signals
) -> None:
    answer = SlowPathHeld()
    upstream.answer = answer
    async with proxy_process(upstream, drain_timeout=20) as (proxy, port, admin):
        idle = await RawConnection.open(port)
        await idle.send(request_bytes("GET", "/fast"))
        assert (await idle.read_response()).body == b"fast"
        slow = await start_slow_request(port, upstream)
        assert (await admin_get(admin, "/readyz")).status == 200

        loop = asyncio.get_running_loop()
        signalled = loop.time()
        proxy.send_signal(signum)
        # The idle keep-alive connection is closed at the start of the drain...
        await wait_closed_by_peer(idle)
        closed_after = loop.time() - signalled
        # ...after the listener stopped and readiness turned.
        readiness = await admin_get(admin, "/readyz")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOOPBACK, port)
        health = await admin_get(admin, "/healthz")

        answer.release.set()
        response = await slow.read_response()
        await wait_closed_by_peer(slow)  # a draining proxy keeps no connection alive
        code = await proxy.wait_exit()
        for connection in (idle, slow):
            await connection.close()

    assert closed_after < 1.0
    assert (readiness.status, readiness.text) == (503, "not ready: draining\n")
    assert health.status == 200
    assert (response.status, response.body) == (200, b"slow answer")
    assert code == 0
    [line] = proxy.events("request")[1:]  # the slow request, logged as completed
    assert (line["request_id"], line["outcome"]) == ("slow-1", "completed")
    assert proxy.events("proxy_stopped")


async def test_requests_still_running_at_the_drain_timeout_are_cut_and_the_exit_is_0(
    upstream: RawUpstream,
) -> None:
    upstream.answer = SlowPathHeld()  # never released
    async with proxy_process(upstream, drain_timeout=0.3) as (proxy, port, _):
        slow = await start_slow_request(port, upstream)
        proxy.send_signal(signal.SIGTERM)
        await wait_closed_by_peer(slow)
        code = await proxy.wait_exit()
        async with asyncio.timeout(WAIT):
            await upstream.connections[0].closed.wait()
        await slow.close()

    assert code == 0
    [line] = proxy.events("request")
    # Cut by the proxy itself, not left by the client: not a hang-up.
    assert (line["outcome"], line["status"], line["level"]) == ("drain_timeout", 503, "warning")


async def test_a_second_signal_exits_at_once_with_status_1(upstream: RawUpstream) -> None:
    upstream.answer = SlowPathHeld()  # never released
    async with proxy_process(upstream, drain_timeout=20) as (proxy, port, _):
        slow = await start_slow_request(port, upstream)
        proxy.send_signal(signal.SIGTERM)
        await proxy.wait_for_event("proxy_draining")
        proxy.send_signal(signal.SIGTERM)
        code = await proxy.wait_exit()
        await slow.close()

    assert code == 1
    assert proxy.events("proxy_exit_now")


async def test_the_drain_waits_for_a_write_carried_to_the_end_after_its_client_left(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    answer = SlowPathHeld()
    upstream.answer = answer
    async with start_proxy(upstream.url) as proxy:
        idle = await RawConnection.open(proxy.address.port)
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("POST", "/slow", body=b"data"))
            await upstream.wait_requests(1)
            client.hang_up("rst")
            stopping = asyncio.create_task(proxy.stop(drain_seconds=WAIT))
            await wait_closed_by_peer(idle)  # the drain has begun
            await idle.close()
            assert not stopping.done()
            answer.release.set()
            async with asyncio.timeout(WAIT):
                await stopping
            [line] = logs.events("request")

    assert (line["outcome"], line["upstream_status"]) == ("client_hangup", 200)


async def test_a_write_carried_after_its_client_left_is_cut_when_the_drain_runs_out(
    upstream: RawUpstream, start_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.answer = SlowPathHeld()  # never released
    async with start_proxy(upstream.url) as proxy:
        # Told when the hang-up has handed the exchange's task to the forwarder, which aiohttp
        # no longer waits for: only the forwarder's own drain can end it.
        detach, detached = proxy.forwarder._detach, asyncio.Event()

        def detach_and_tell(*args: Any) -> None:
            detach(*args)
            detached.set()

        monkeypatch.setattr(proxy.forwarder, "_detach", detach_and_tell)
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("POST", "/slow", body=b"data"))
            await upstream.wait_requests(1)
            client.hang_up("rst")
            async with asyncio.timeout(WAIT):
                await detached.wait()
                await proxy.stop(drain_seconds=0.2)
                await upstream.connections[0].closed.wait()
            [line] = logs.events("request")

    assert proxy.forwarder.detached == set()
    # Cut by the proxy when the drain ran out, which closed the upstream connection.
    assert (line["outcome"], line["status"]) == ("drain_timeout", 503)
