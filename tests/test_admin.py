"""The admin listener: health, readiness and metrics on a port of their own."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from proxy.serving.server import RunningProxy
from proxy.wire.address import HostPort
from tests.admin_support import admin_get, scrape
from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream
from tests.support import (
    LOOPBACK,
    WAIT,
    RawConnection,
    proxy_argv,
    request_bytes,
    running_script,
    script_path,
)


def free_port() -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def proxy_with_admin(
    start_proxy: ProxyFactory, upstream_url: str, *, check_upstream: bool = False
) -> AsyncIterator[tuple[RunningProxy, int]]:
    async with start_proxy(
        upstream_url, admin=HostPort(LOOPBACK, 0), ready_check_upstream=check_upstream
    ) as proxy:
        assert proxy.admin_address is not None
        yield proxy, proxy.admin_address.port


@pytest.mark.parametrize("path", ["/healthz", "/livez"])
async def test_health_is_200_without_touching_a_dead_backend(
    start_proxy: ProxyFactory, path: str
) -> None:
    async with proxy_with_admin(start_proxy, f"http://{LOOPBACK}:{free_port()}") as (_, admin):
        answer = await admin_get(admin, path)

    assert (answer.status, answer.text) == (200, "ok\n")


async def test_readiness_is_200_while_accepting_traffic(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with proxy_with_admin(start_proxy, upstream.url) as (_, admin):
        answer = await admin_get(admin, "/readyz")

    assert answer.status == 200
    assert upstream.connections == []  # without --ready-check-upstream the backend is not probed


async def test_readiness_follows_the_upstream_only_when_asked_and_never_blocks_start_up(
    start_proxy: ProxyFactory,
) -> None:
    port = free_port()
    # The proxy starts although nothing listens upstream: readiness is not a start-up check.
    async with proxy_with_admin(start_proxy, f"http://{LOOPBACK}:{port}", check_upstream=True) as (
        _,
        admin,
    ):
        refused = await admin_get(admin, "/readyz")
        health = await admin_get(admin, "/healthz")
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((LOOPBACK, port))
            listener.listen()
            accepting = await admin_get(admin, "/readyz")

    assert (refused.status, refused.text) == (503, "not ready: upstream refuses connections\n")
    assert health.status == 200
    assert accepting.status == 200


async def test_admin_paths_on_the_client_port_are_forwarded_not_answered(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with proxy_with_admin(start_proxy, upstream.url) as (proxy, admin):
        assert admin != proxy.address.port
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/metrics"))
        response = await client.read_response()
        await client.close()

    assert response.body == b"ok"  # the raw upstream's answer
    assert [request.target for request in upstream.requests] == ["/metrics"]


async def test_metrics_are_the_prometheus_text_format(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with proxy_with_admin(start_proxy, upstream.url) as (_, admin):
        answer = await admin_get(admin, "/metrics")

    assert answer.status == 200
    assert answer.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE hangup_requests_total counter" in answer.text


async def test_no_admin_listener_unless_asked(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url) as proxy:
        assert proxy.admin_runner is None
        assert proxy.admin_address is None


# --- the real console script ---------------------------------------------------------------------


async def test_script_counts_a_real_hang_up_in_its_metrics(upstream: RawUpstream) -> None:
    held = asyncio.Event()

    async def never(request: object, connection: object) -> bytes:
        await held.wait()
        return b""

    upstream.answer = never
    async with running_script(proxy_argv(upstream.url), "proxy_listening") as (proxy, port):
        admin = await proxy.listening_port("admin_listening")
        client = await RawConnection.open(port)
        await client.send(request_bytes("GET", "/slow"))
        await upstream.wait_requests(1)
        client.hang_up("rst")
        async with asyncio.timeout(WAIT):
            await upstream.connections[0].closed.wait()
        await proxy.wait_for_event("request", outcome="client_hangup")
        metrics = await scrape(admin)

    assert metrics.value("hangup_requests_total", outcome="client_hangup") == 1
    assert metrics.value("hangup_client_disconnects_total", phase="awaiting_upstream_headers") == 1
    assert metrics.value("hangup_upstream_cancellations_total") == 1
    assert metrics.value("hangup_cancel_propagation_seconds_count") == 1


def test_script_names_a_taken_admin_address_in_one_line(taken_port: int) -> None:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("HANGUP")}
    finished = subprocess.run(
        [
            script_path("hangup-proxy"),
            "--listen",
            f"{LOOPBACK}:0",
            "--admin",
            f"{LOOPBACK}:{taken_port}",
            "--upstream",
            f"http://{LOOPBACK}:9",
        ],
        env=inherited,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )

    assert finished.returncode == 1
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith(f"hangup-proxy: error: cannot listen on {LOOPBACK}:{taken_port}")
