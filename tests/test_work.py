"""The hang-up reaches the work: an SQLite query, an outbound call and a ``def`` endpoint stop.

Real console scripts: ``hangup-proxy`` in front of ``hangup-demo-backend``, hang-ups from raw
sockets. The backend's CPU time is read from outside, in ``/proc/PID/stat``; the moment the work
stopped is the backend's own ``work_stopped`` line, compared with the moment the test hung up.
(PostgreSQL: tests/test_work_postgres.py.)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from demo_backend.protocol import cancelling_protocol
from tests.conftest import ProxyFactory
from tests.inprocess_uvicorn import running_uvicorn
from tests.support import (
    HANGUP_KINDS,
    WAIT,
    HangupKind,
    RawConnection,
    Stack,
    request_bytes,
    running_stack,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of every thread of ``pid`` (proc(5): fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def seconds_since(moment: datetime, line: dict[str, Any]) -> float:
    return (datetime.fromisoformat(line["timestamp"]) - moment).total_seconds()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack() as started:
        yield started
    assert not any("Traceback" in line for line in started.output)


async def start_work(stack: Stack, target: str, request_id: str) -> RawConnection:
    client = await RawConnection.open(stack.port)
    await client.send(request_bytes("GET", target, [("X-Request-ID", request_id)]))
    await stack.backend.wait_for_event("work_started", request_id=request_id)
    return client


async def cpu_over(pid: int, seconds: float) -> float:
    """CPU seconds ``pid`` used over the next ``seconds`` of wall time."""
    before = cpu_seconds(pid)
    # Not a wait for an event: the measurement window itself.
    await asyncio.sleep(seconds)
    return cpu_seconds(pid) - before


@pytest.mark.parametrize("name", ["sqlite", "thread"])
@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_a_hang_up_stops_cpu_bound_work_and_the_backend_goes_quiet(
    stack: Stack, name: str, kind: HangupKind
) -> None:
    request_id = f"work-{name}-{kind}"
    pid = stack.backend.process.pid
    client = await start_work(stack, f"/work/{name}?seconds=30", request_id)
    while_working = await cpu_over(pid, 0.5)
    hung_up_at = datetime.now(UTC)
    client.hang_up(kind)
    stopped = await stack.backend.wait_for_event("work_stopped", request_id=request_id)
    await stack.backend.wait_for_event("handler_cancelled", request_id=request_id)
    # The second that starts 0.2 s after the hang-up.
    await asyncio.sleep(max(0.0, 0.2 - (datetime.now(UTC) - hung_up_at).total_seconds()))
    after = await cpu_over(pid, 1.0)
    stats = await stack.get_json("/stats")
    assert while_working >= 0.25, while_working
    assert seconds_since(hung_up_at, stopped) < 0.2
    assert after <= 0.05, after
    assert stats["work"][name] == {"started": 1, "completed": 0, "cancelled": 1}


@pytest.mark.parametrize("name", ["sqlite", "thread"])
async def test_a_client_that_stays_gets_the_result_of_cpu_bound_work(
    stack: Stack, name: str
) -> None:
    result = await stack.get_json(f"/work/{name}?seconds=0.2")
    stats = await stack.get_json("/stats")
    assert result["seconds"] == 0.2
    assert result["rows" if name == "sqlite" else "rounds"] > 0
    assert stats["work"][name] == {"started": 1, "completed": 1, "cancelled": 0}


async def test_seconds_out_of_range_is_refused_with_422(stack: Stack) -> None:
    statuses = set()
    for target in ("/work/sqlite", "/work/thread", "/work/relay"):
        for seconds in ("-1", "3601", "soon"):
            client = await RawConnection.open(stack.port)
            await client.send(request_bytes("GET", f"{target}?seconds={seconds}"))
            statuses.add((await client.read_response()).status)
            await client.close()
    assert statuses == {422}


@pytest.fixture
async def chain() -> AsyncIterator[tuple[Stack, Stack]]:
    """Backend B behind its own proxy; backend A calls B's proxy as its downstream."""
    async with running_stack() as downstream:
        url = f"http://127.0.0.1:{downstream.port}"
        async with running_stack(("--port", "0", "--downstream", url)) as front:
            yield front, downstream
        assert not any("Traceback" in line for line in front.output + downstream.output)


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_one_hang_up_cancels_the_handler_of_the_service_behind_the_relay(
    chain: tuple[Stack, Stack], kind: HangupKind
) -> None:
    front, downstream = chain
    request_id = f"relay-{kind}"
    client = await start_work(front, "/work/relay?seconds=30", request_id)
    # The X-Request-ID goes on downstream, so B's lines carry it too.
    await downstream.backend.wait_for_event("slow_started", request_id=request_id)
    hung_up_at = datetime.now(UTC)
    client.hang_up(kind)
    stopped = await front.backend.wait_for_event("work_stopped", request_id=request_id)
    cancelled = await downstream.backend.wait_for_event("handler_cancelled", request_id=request_id)
    downstream_line = await downstream.proxy.wait_for_event("request", request_id=request_id)
    front_stats = await front.get_json("/stats")
    downstream_stats = await downstream.get_json("/stats")
    assert seconds_since(hung_up_at, stopped) < 0.2
    assert seconds_since(hung_up_at, cancelled) < 0.3
    assert downstream_line["outcome"] == "client_hangup"
    assert front_stats["work"]["relay"] == {"started": 1, "completed": 0, "cancelled": 1}
    assert (downstream_stats["cancelled"], downstream_stats["completed"]) == (1, 0)


async def test_a_client_that_stays_gets_the_downstream_answer_through_the_relay(
    chain: tuple[Stack, Stack],
) -> None:
    front, downstream = chain
    result = await front.get_json("/work/relay?seconds=0.1")
    stats = await front.get_json("/stats")
    assert result == {"downstream": {"slept": 0.1}}
    assert stats["work"]["relay"] == {"started": 1, "completed": 1, "cancelled": 0}
    assert (await downstream.get_json("/stats"))["completed"] == 1


async def test_the_relay_without_a_downstream_answers_503_with_the_reason(stack: Stack) -> None:
    client = await RawConnection.open(stack.port)
    await client.send(request_bytes("GET", "/work/relay?seconds=1"))
    response = await client.read_response()
    await client.close()
    assert response.status == 503
    assert response.json() == {
        "detail": "no downstream is configured: start the backend with --downstream"
    }


async def test_a_downstream_that_refuses_connections_gives_503_per_request() -> None:
    # A port that was just free: nothing listens there.
    probe = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    backend_args = ("--port", "0", "--downstream", f"http://127.0.0.1:{port}")
    async with running_stack(backend_args) as started:
        statuses = []
        for _ in range(2):
            client = await RawConnection.open(started.port)
            await client.send(request_bytes("GET", "/work/relay?seconds=1"))
            response = await client.read_response()
            await client.close()
            statuses.append((response.status, response.json()["detail"]))
    assert statuses == [(503, "the downstream could not be reached: ConnectError")] * 2
    assert not any("Traceback" in line for line in started.output)


# --- an app with a BaseHTTPMiddleware ------------------------------------------------------------


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_a_handler_behind_a_base_http_middleware_is_still_cancelled(
    start_proxy: ProxyFactory, http: str
) -> None:
    """``@app.middleware("http")`` runs the handler in a task of its own and hides
    ``http.disconnect`` from it; the cancel of the request task still reaches it."""
    started = asyncio.Event()
    cancelled = asyncio.Event()
    app = FastAPI()

    @app.middleware("http")
    async def add_header(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["X-Through"] = "middleware"
        return response

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"done": "yes"}

    protocol = cancelling_protocol("httptools" if http == "httptools" else "h11")
    async with (
        running_uvicorn(app, http=protocol) as backend,
        start_proxy(f"http://127.0.0.1:{backend.port}") as proxy,
    ):
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/slow"))
        async with asyncio.timeout(WAIT):
            await started.wait()
        hung_up_at = time.monotonic()
        client.hang_up("fin")
        async with asyncio.timeout(WAIT):
            await cancelled.wait()
        took = time.monotonic() - hung_up_at
    assert took < 0.2
