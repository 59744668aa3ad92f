"""The demo backend's routes, served by uvicorn with the cancelling protocol."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI

from demo_backend.app import create_app, stats_of
from demo_backend.protocol import HttpImplementation, cancelling_protocol
from demo_backend.stats import COUNTERS, WORK_NAMES, WORK_OUTCOMES, Counter, Stats
from tests.inprocess_uvicorn import InProcessServer, running_uvicorn
from tests.support import WAIT, RawConnection, RawResponse, request_bytes, watch_logs


@asynccontextmanager
async def backend(
    http: HttpImplementation = "httptools",
) -> AsyncIterator[tuple[InProcessServer, Stats]]:
    app: FastAPI = create_app()
    async with running_uvicorn(app, http=cancelling_protocol(http), lifespan="on") as server:
        yield server, stats_of(app)


async def until(stats: Stats, counter: Counter, value: int) -> None:
    async with asyncio.timeout(WAIT):
        await stats.wait_until(lambda counts: counts[counter] >= value)


async def exchange(port: int, request: bytes) -> RawResponse:
    connection = await RawConnection.open(port)
    try:
        await connection.send(request)
        return await connection.read_response()
    finally:
        await connection.close()


async def test_slow_get_is_counted_as_cancelled_when_client_hangs_up() -> None:
    with watch_logs() as logs:
        async with backend() as (server, stats):
            connection = await RawConnection.open(server.port)
            headers = [("X-Request-ID", "slow-get")]
            await connection.send(request_bytes("GET", "/slow?seconds=30", headers))
            await until(stats, "started", 1)
            connection.hang_up("fin")
            await until(stats, "cancelled", 1)
            await logs.wait_for("handler_cancelled", request_id="slow-get")

    assert stats["completed"] == 0
    started = logs.events("slow_started", request_id="slow-get")
    assert [(line["method"], line["path"], line["seconds"]) for line in started] == [
        ("GET", "/slow", 30.0)
    ]
    assert logs.events("slow_completed") == []


async def test_slow_post_completes_although_client_hangs_up() -> None:
    with watch_logs() as logs:
        async with backend() as (server, stats):
            connection = await RawConnection.open(server.port)
            headers = [("X-Request-ID", "slow-post")]
            await connection.send(request_bytes("POST", "/slow?seconds=0.05", headers, b"x"))
            await until(stats, "started", 1)
            connection.hang_up("rst")
            await until(stats, "completed", 1)

    assert stats["cancelled"] == 0
    assert len(logs.events("slow_completed", request_id="slow-post")) == 1
    assert logs.events("handler_cancelled") == []


async def test_slow_post_reads_the_whole_body_and_reports_its_digest() -> None:
    body = bytes(range(256)) * 800  # 200 KiB: beyond uvicorn's 64 KiB read pause
    async with backend() as (server, _):
        response = await exchange(server.port, request_bytes("POST", "/slow?seconds=0", [], body))

    assert response.status == 200
    assert response.json() == {
        "slept": 0.0,
        "body_bytes": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }


async def test_background_work_outlives_its_response() -> None:
    async with backend() as (server, stats):
        response = await exchange(
            server.port, request_bytes("GET", "/background?seconds=0", [("Connection", "close")])
        )
        await until(stats, "background_completed", 1)

    assert response.json() == {"scheduled": 0.0}
    assert stats["background_cancelled"] == 0


async def test_stats_report_every_counter_as_an_integer() -> None:
    async with backend() as (server, _):
        await exchange(server.port, request_bytes("GET", "/slow?seconds=0"))
        response = await exchange(server.port, request_bytes("GET", "/stats"))

    expected: dict[str, Any] = {**dict.fromkeys(COUNTERS, 0), "started": 1, "completed": 1}
    expected["work"] = {name: dict.fromkeys(WORK_OUTCOMES, 0) for name in WORK_NAMES}
    assert response.json() == expected


@pytest.mark.parametrize("target", ["/slow?seconds=-1", "/slow?seconds=soon", "/slow"])
async def test_slow_rejects_a_missing_or_invalid_duration(target: str) -> None:
    async with backend() as (server, stats):
        response = await exchange(server.port, request_bytes("GET", target))

    assert response.status == 422
    assert stats["started"] == 0


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_echo_reports_the_request_as_it_arrived(http: HttpImplementation) -> None:
    body = b"\x00\xffbinary body"
    headers = [("X-B", "2"), ("X-A", "1"), ("X-A", "3"), ("Content-Type", "a/b")]
    request = request_bytes("PURGE", "/ech%6F?q=%20x&q=y", headers, body)
    async with backend(http) as (server, _):
        response = await exchange(server.port, request)

    echoed: dict[str, Any] = json.loads(response.body)
    assert echoed == {
        "method": "PURGE",
        "raw_path": "/ech%6F",
        "query_string": "q=%20x&q=y",
        "headers": [
            ["host", "test.local"],
            ["x-b", "2"],
            ["x-a", "1"],
            ["x-a", "3"],
            ["content-type", "a/b"],
            ["content-length", str(len(body))],
        ],
        "body_bytes": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
