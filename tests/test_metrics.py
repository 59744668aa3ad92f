"""/metrics: counters move with real exchanges, hang-ups above all, parsed as Prometheus does."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import ClientSession
from prometheus_client import Gauge, Histogram

from proxy.exchange.state import Exchange
from proxy.observability import metrics as metrics_module
from proxy.observability.metrics import ABORTED, CANCEL_PROPAGATION_BUCKETS, REJECTION_REASONS
from proxy.serving.server import RunningProxy
from proxy.wire.address import HostPort
from tests.admin_support import Scrape, admin_get, scrape
from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream, ReceivedRequest, UpstreamConnection, response_bytes
from tests.support import LOOPBACK, WAIT, RawConnection, request_bytes, watch_logs

OUTCOMES = ("completed", "client_hangup", "upstream_error", "upstream_timeout", "client_error")
PHASES = ("request_body", "awaiting_upstream_headers", "streaming_response")


class HeldAnswer:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        await self.release.wait()
        return response_bytes(200, b"late")


@pytest.fixture
def with_admin(start_proxy: ProxyFactory) -> Callable[..., Any]:
    @asynccontextmanager
    async def start(upstream_url: str, **overrides: Any) -> AsyncIterator[tuple[RunningProxy, int]]:
        async with start_proxy(upstream_url, admin=HostPort(LOOPBACK, 0), **overrides) as proxy:
            assert proxy.admin_address is not None
            yield proxy, proxy.admin_address.port

    return start


async def test_every_metric_is_exported_with_its_label_values_before_any_request(
    upstream: RawUpstream, with_admin: Callable[..., Any]
) -> None:
    async with with_admin(upstream.url) as (_, admin_port):
        metrics = await scrape(admin_port)

    for outcome in (*OUTCOMES, ABORTED):
        assert metrics.value("hangup_requests_total", outcome=outcome) == 0
    for phase in PHASES:
        assert metrics.value("hangup_client_disconnects_total", phase=phase) == 0
    for reason in REJECTION_REASONS:
        assert metrics.value("hangup_rejected_requests_total", reason=reason) == 0
    for name in (
        "hangup_upstream_cancellations_total",
        "hangup_upstream_connect_errors_total",
        "hangup_upstream_timeouts_total",
        "hangup_invalid_deadline_headers_total",
        "hangup_active_requests",
        "hangup_cancel_propagation_seconds_count",
        "hangup_request_duration_seconds_count",
        "hangup_websocket_sessions",
        "hangup_websocket_session_duration_seconds_count",
    ):
        assert metrics.value(name) == 0, name
    [build] = metrics.labels("hangup_build_info")
    assert set(build) == {"version", "python"}
    assert all(name.startswith("hangup_") for name in metrics.families)
    assert upstream.connections == []  # a scrape never touches the backend


async def test_a_hang_up_awaiting_headers_moves_the_cancel_counters(
    upstream: RawUpstream, with_admin: Callable[..., Any]
) -> None:
    held = HeldAnswer()
    upstream.answer = held
    async with with_admin(upstream.url) as (proxy, admin_port):
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("GET", "/slow"))
            await upstream.wait_requests(1)
            during = await scrape(admin_port)
            client.hang_up("fin")
            async with asyncio.timeout(WAIT):
                await upstream.connections[0].closed.wait()
            await logs.wait_for("request")
        after = await scrape(admin_port)

    assert during.value("hangup_active_requests") == 1
    assert after.value("hangup_active_requests") == 0
    assert after.value("hangup_requests_total", outcome="client_hangup") == 1
    assert after.value("hangup_client_disconnects_total", phase="awaiting_upstream_headers") == 1
    assert after.value("hangup_upstream_cancellations_total") == 1
    assert after.value("hangup_cancel_propagation_seconds_count") == 1
    # Propagation inside the proxy is one loop turn: well under the largest bucket.
    slowest = str(CANCEL_PROPAGATION_BUCKETS[-1])
    assert after.value("hangup_cancel_propagation_seconds_bucket", le=slowest) == 1
    assert after.value("hangup_request_duration_seconds_count") == 1


async def test_a_hang_up_while_streaming_is_counted_in_its_phase(
    upstream: RawUpstream, with_admin: Callable[..., Any]
) -> None:
    async def streaming(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        return response_bytes(200, b"", [("Transfer-Encoding", "chunked")]) + b"5\r\nfirst\r\n"

    upstream.answer = streaming
    async with with_admin(upstream.url) as (proxy, admin_port):
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("GET", "/stream"))
            async with asyncio.timeout(WAIT):
                await client.reader.readuntil(b"first")
            client.hang_up("rst")
            await logs.wait_for("request")
        metrics = await scrape(admin_port)

    assert metrics.value("hangup_client_disconnects_total", phase="streaming_response") == 1
    assert metrics.value("hangup_client_disconnects_total", phase="awaiting_upstream_headers") == 0
    assert metrics.value("hangup_upstream_cancellations_total") == 1


async def test_a_write_carried_to_the_end_is_a_disconnect_but_not_a_cancellation(
    upstream: RawUpstream, with_admin: Callable[..., Any]
) -> None:
    held = HeldAnswer()
    upstream.answer = held
    async with with_admin(upstream.url) as (proxy, admin_port):
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("POST", "/write", body=b"data"))
            await upstream.wait_requests(1)
            client.hang_up("rst")
            held.release.set()
            await logs.wait_for("request")
        metrics = await scrape(admin_port)

    assert metrics.value("hangup_requests_total", outcome="client_hangup") == 1
    assert metrics.value("hangup_upstream_cancellations_total") == 0
    assert metrics.value("hangup_cancel_propagation_seconds_count") == 0
    assert metrics.value("hangup_active_requests") == 0


async def completed_get(
    port: int, target: str, headers: list[tuple[str, str]] | None = None
) -> int:
    client = await RawConnection.open(port)
    await client.send(request_bytes("GET", target, headers or []))
    response = await client.read_response()
    await client.close()
    return response.status


async def test_completed_requests_and_rejections_are_counted_by_outcome_and_reason(
    upstream: RawUpstream, with_admin: Callable[..., Any]
) -> None:
    async with with_admin(upstream.url) as (proxy, admin_port):
        assert await completed_get(proxy.address.port, "/a") == 200
        assert await completed_get(proxy.address.port, "/b") == 200
        assert await completed_get(proxy.address.port, "/c", [("Expect", "magic")]) == 417
        metrics = await scrape(admin_port)

    assert metrics.value("hangup_requests_total", outcome="completed") == 2
    assert metrics.value("hangup_requests_total", outcome="client_error") == 1
    assert metrics.value("hangup_rejected_requests_total", reason="unsupported_expectation") == 1
    assert metrics.value("hangup_request_duration_seconds_count") == 3


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def test_a_refused_upstream_counts_as_a_connect_error(
    with_admin: Callable[..., Any],
) -> None:
    async with with_admin(f"http://{LOOPBACK}:{closed_port()}") as (proxy, admin_port):
        assert await completed_get(proxy.address.port, "/") == 502
        metrics = await scrape(admin_port)

    assert metrics.value("hangup_upstream_connect_errors_total") == 1
    assert metrics.value("hangup_requests_total", outcome="upstream_error") == 1


async def test_a_silent_upstream_counts_as_a_timeout(
    upstream: RawUpstream, with_admin: Callable[..., Any]
) -> None:
    upstream.answer = HeldAnswer()
    async with with_admin(upstream.url, upstream_timeout=0.2) as (proxy, admin_port):
        assert await completed_get(proxy.address.port, "/") == 504
        metrics = await scrape(admin_port)

    assert metrics.value("hangup_upstream_timeouts_total") == 1
    assert metrics.value("hangup_requests_total", outcome="upstream_timeout") == 1


async def test_two_proxies_in_one_process_keep_separate_counts(
    upstream: RawUpstream, with_admin: Callable[..., Any]
) -> None:
    async with (
        with_admin(upstream.url) as (first, first_admin),
        with_admin(upstream.url) as (_, second_admin),
    ):
        assert await completed_get(first.address.port, "/") == 200
        first_metrics: Scrape = await scrape(first_admin)
        second_metrics: Scrape = await scrape(second_admin)

    assert first_metrics.value("hangup_requests_total", outcome="completed") == 1
    assert second_metrics.value("hangup_requests_total", outcome="completed") == 0


async def test_metrics_carry_no_created_series_in_either_format(
    upstream: RawUpstream, with_admin: Callable[..., Any]
) -> None:
    upstream.answer = HeldAnswer()
    async with with_admin(upstream.url) as (proxy, admin_port):
        # A hang-up, so the labelled children made on demand exist too, and the decision counter.
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("GET", "/slow"))
            await upstream.wait_requests(1)
            client.hang_up("rst")
            await logs.wait_for("request")
        text = (await admin_get(admin_port, "/metrics")).text
        async with (
            asyncio.timeout(WAIT),
            ClientSession() as session,
            session.get(
                f"http://{LOOPBACK}:{admin_port}/metrics",
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            ) as response,
        ):
            assert response.content_type == "application/openmetrics-text"
            openmetrics = await response.text()

    decisions = 'hangup_policy_decisions_total{action="cancel",rule="default"} 1.0'
    assert decisions in text
    assert "hangup_hangup_decisions" not in text  # the old name is gone
    for exposition in (text, openmetrics):
        assert "hangup_requests_total" in exposition
        assert [line for line in exposition.splitlines() if "_created" in line] == []


def _exported(collector: Any, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a registry or of one metric, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in collector.collect()
        for sample in metric.samples
        if sample.name.startswith(prefix)
    }


@pytest.mark.parametrize("multiprocess", [False, True], ids=["one process", "workers"])
def test_counts_kept_in_plain_integers_export_exactly_what_prometheus_client_would(
    multiprocess: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    if multiprocess:
        # Only whether the variable is set matters here: the values stay in this process.
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    # Durations on every bucket's bound (Histogram.observe files a value equal to a bound in that
    # bucket), between two bounds, and past the last (+Inf). The clock reads 0, so each duration
    # is exactly the one given.
    durations = [*metrics_module.REQUEST_DURATION_BUCKETS, 0.0, 0.007, 2.0, 301.0, 1e6]
    monkeypatch.setattr(time, "perf_counter", lambda: 0.0)
    proxy_metrics = metrics_module.ProxyMetrics()
    reference = metrics_module.new_registry()
    histogram = Histogram(
        "hangup_request_duration_seconds",
        "reference",
        buckets=metrics_module.REQUEST_DURATION_BUCKETS,
        registry=reference,
    )
    active = Gauge("hangup_active_requests", "reference", registry=reference)
    for duration in durations:
        exchange = Exchange("rid", "GET", "/", None, cancellable=True)
        exchange.started = -duration
        exchange.upstream_answered(200)
        exchange.completed(200)
        proxy_metrics.started()
        proxy_metrics.finished(exchange)
        histogram.observe(duration)
    proxy_metrics.started()  # one still in flight
    active.inc()

    expected = _exported(reference, "hangup_request_duration_seconds")
    if multiprocess:
        # The supervisor reads the values from its own process, never through this registry:
        # they must be there before anything collects it.
        assert _exported(proxy_metrics.request_duration, "hangup_") == expected
        assert _exported(proxy_metrics.active_requests, "hangup_") == _exported(active, "hangup_")
    exported = _exported(proxy_metrics.registry, "hangup_request_duration_seconds")
    assert exported == expected
    assert _exported(proxy_metrics.registry, "hangup_active_requests") == _exported(
        reference, "hangup_active_requests"
    )
    completed = _exported(proxy_metrics.registry, "hangup_requests_total")
    assert completed[("hangup_requests_total", (("outcome", "completed"),))] == len(durations)
    # Collected again with nothing new: nothing is added twice.
    assert _exported(proxy_metrics.registry, "hangup_request_duration_seconds") == exported
