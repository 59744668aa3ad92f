"""``/work/postgres`` through the real ``hangup-proxy`` and ``hangup-demo-backend`` processes, on
a real PostgreSQL server (the session's ``postgres_dsn``).

The tests that need a working database share one stack (pool size 1, module-scoped, in the
module's event loop) and compare ``/stats`` before and after; starting a stack costs more than a
second. PostgreSQL's own view of its sessions, ``pg_stat_activity``, is external state with no
event to wait on: it is polled, briefly and within a bound.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from demo_backend.cli import main
from demo_backend.work.postgres_query import NOT_CONFIGURED
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
)

POLL_INTERVAL = 0.005
LONG_SLEEP = 30
in_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(postgres_dsn: str) -> AsyncIterator[Stack]:
    backend_args = ("--port", "0", "--postgres-dsn", postgres_dsn, "--postgres-pool-size", "1")
    async with running_stack(backend_args) as started:
        yield started
    assert not any("Traceback" in line for line in started.output)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The test's own session on the server, to look at everyone else's."""
    async with asyncio.timeout(WAIT):
        connection = await asyncpg.connect(postgres_dsn)
    yield connection
    await connection.close()


# --- helpers ------------------------------------------------------------------------------------


async def get(stack: Stack, target: str, request_id: str | None = None) -> RawResponse:
    headers = [] if request_id is None else [("X-Request-ID", request_id)]
    client = await RawConnection.open(stack.port)
    await client.send(request_bytes("GET", target, headers))
    response = await client.read_response()
    await client.close()
    return response


async def postgres_counts(stack: Stack) -> dict[str, int]:
    stats = await stack.get_json("/stats")
    counts: dict[str, int] = stats["work"]["postgres"]
    return counts


def plus(before: dict[str, int], **more: int) -> dict[str, int]:
    return {outcome: count + more.get(outcome, 0) for outcome, count in before.items()}


async def poll_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Re-check PostgreSQL's state until ``check`` holds; bounded by ``WAIT``."""
    try:
        async with asyncio.timeout(WAIT):
            while not await check():  # noqa: ASYNC110 - server state, no event to wait on
                await asyncio.sleep(POLL_INTERVAL)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def sleeping_sessions(server: asyncpg.Connection) -> list[Any]:
    """Sessions running the backend's ``pg_sleep`` right now."""
    return await server.fetch(
        "SELECT pid, state FROM pg_stat_activity"
        " WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active' AND pid <> pg_backend_pid()"
    )


async def idle_in_transaction(server: asyncpg.Connection) -> int:
    count: int = await server.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
    )
    return count


@dataclass(frozen=True)
class HangUp:
    """When the client went away: monotonic for durations, UTC to compare with log lines."""

    monotonic: float
    utc: datetime


async def hang_up_while_sleeping(
    stack: Stack, server: asyncpg.Connection, request_id: str, kind: HangupKind
) -> HangUp:
    """Start a long ``/work/postgres``, wait until its query runs on the server, hang up."""
    client = await RawConnection.open(stack.port)
    await client.send(
        request_bytes("GET", f"/work/postgres?seconds={LONG_SLEEP}", [("X-Request-ID", request_id)])
    )
    await stack.backend.wait_for_event("work_started", request_id=request_id, work="postgres")

    async def is_sleeping() -> bool:
        return len(await sleeping_sessions(server)) == 1

    await poll_until(is_sleeping, "the pg_sleep query in pg_stat_activity")
    # Taken just before the close: the measured delays include the FIN's or RST's own trip.
    hung_up = HangUp(time.monotonic(), datetime.now(UTC))
    client.hang_up(kind)
    return hung_up


# --- a client that hangs up ---------------------------------------------------------------------


@in_module_loop
@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_query_is_cancelled_on_the_server_when_the_client_hangs_up(
    stack: Stack, server: asyncpg.Connection, kind: HangupKind
) -> None:
    request_id = f"pg-hangup-{kind}"
    before = await postgres_counts(stack)
    hung_up = await hang_up_while_sleeping(stack, server, request_id, kind)

    async def is_gone() -> bool:
        return await sleeping_sessions(server) == []

    await poll_until(is_gone, "the pg_sleep query to leave pg_stat_activity")
    gone_after = time.monotonic() - hung_up.monotonic
    stopped = await stack.backend.wait_for_event(
        "work_stopped", request_id=request_id, work="postgres"
    )
    await stack.backend.wait_for_event("handler_cancelled", request_id=request_id)

    assert gone_after < 0.3
    counted_after = datetime.fromisoformat(stopped["timestamp"]) - hung_up.utc
    assert timedelta(0) <= counted_after < timedelta(milliseconds=200)
    assert await idle_in_transaction(server) == 0
    assert await postgres_counts(stack) == plus(before, started=1, cancelled=1)


@in_module_loop
async def test_pooled_connection_goes_back_healthy_and_is_reused_after_a_hang_up(
    stack: Stack, server: asyncpg.Connection
) -> None:
    first = await stack.get_json("/work/postgres?seconds=0")
    await hang_up_while_sleeping(stack, server, "pg-reuse", "rst")
    await stack.backend.wait_for_event("work_stopped", request_id="pg-reuse", work="postgres")
    second = await stack.get_json("/work/postgres?seconds=0")

    # Pool size 1: the same server process means the same connection, not a replacement.
    assert second["backend_pid"] == first["backend_pid"]
    state = await server.fetchval(
        "SELECT state FROM pg_stat_activity WHERE pid = $1", first["backend_pid"]
    )
    assert state == "idle"


# --- a client that stays, and requests the route refuses ----------------------------------------


@in_module_loop
async def test_client_that_stays_gets_the_result_and_it_is_counted_completed(
    stack: Stack,
) -> None:
    before = await postgres_counts(stack)
    response = await get(stack, "/work/postgres?seconds=0.1", "pg-stays")
    await stack.backend.wait_for_event("work_completed", request_id="pg-stays", work="postgres")

    assert response.status == 200
    body = response.json()
    assert body == {"slept": 0.1, "backend_pid": body["backend_pid"]}
    assert isinstance(body["backend_pid"], int)
    assert await postgres_counts(stack) == plus(before, started=1, completed=1)


@in_module_loop
@pytest.mark.parametrize("seconds", ["-1", "3601"])
async def test_seconds_out_of_range_is_refused_with_422_before_any_work(
    stack: Stack, seconds: str
) -> None:
    before = await postgres_counts(stack)
    response = await get(stack, f"/work/postgres?seconds={seconds}")

    assert response.status == 422
    assert await postgres_counts(stack) == before


async def test_without_a_dsn_the_route_answers_503_with_a_one_line_reason() -> None:
    async with running_stack() as stack:
        response = await get(stack, "/work/postgres?seconds=0")

    assert response.status == 503
    assert response.json() == {"detail": NOT_CONFIGURED}
    assert "\n" not in NOT_CONFIGURED


async def test_unreachable_postgres_answers_503_to_each_request_without_a_traceback() -> None:
    with socket.socket() as probe:  # bound, never listening: connections to it are refused
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
        dsn = f"postgresql://postgres@{LOOPBACK}:{port}/postgres"
        async with running_stack(("--port", "0", "--postgres-dsn", dsn)) as stack:
            responses = [await get(stack, "/work/postgres?seconds=0") for _ in range(2)]

    for response in responses:
        assert response.status == 503
        detail = response.json()["detail"]
        assert detail.startswith("PostgreSQL is unreachable: ")
        assert "\n" not in detail
    assert not any("Traceback" in line for line in stack.output)


def test_a_dsn_that_is_not_a_postgres_uri_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--postgres-dsn", "not-a-dsn"])

    captured = capsys.readouterr()
    assert exited.value.code == 2
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("hangup-demo-backend: error: argument --postgres-dsn: ")
