"""The ``/work/<name>`` routes: each runs one recipe of ``demo_backend.work`` and counts it.

Every route takes ``seconds`` (how long the work runs when nobody hangs up; 0 to 3600, else 422),
answers 200 with a small JSON result when the work completes, and 503 with ``{"detail": reason}``
when what it needs is not configured or not reachable. ``/stats`` shows, per name, how many runs
started, completed and were cancelled; a run that failed counts as started only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio.from_thread
import httpx
import structlog
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from demo_backend.request_id import request_id_from_headers
from demo_backend.stats import Stats
from demo_backend.work.cpu_thread import hash_for
from demo_backend.work.postgres_query import PostgresWork
from demo_backend.work.relay import downstream_client, relay_slow
from demo_backend.work.sqlite_query import interruptible_query
from demo_backend.work.unavailable import WorkUnavailable

WorkSeconds = Annotated[
    float, Query(ge=0, le=3600, description="How long the work runs when nobody hangs up.")
]
T = TypeVar("T")

NO_DOWNSTREAM = "no downstream is configured: start the backend with --downstream"


@dataclass(frozen=True)
class WorkSettings:
    """Where the recipes' outside services are; None leaves that route answering 503."""

    postgres_dsn: str | None = None
    postgres_pool_size: int = 10
    downstream: str | None = None


class WorkResources:
    """The connections the recipes share: made on first use, closed at the app's shutdown."""

    def __init__(self, settings: WorkSettings) -> None:
        self.settings = settings
        self.postgres = PostgresWork(settings.postgres_dsn, settings.postgres_pool_size)
        self._downstream = (
            None if settings.downstream is None else downstream_client(settings.downstream)
        )

    def downstream(self) -> httpx.AsyncClient:
        if self._downstream is None:
            raise WorkUnavailable(NO_DOWNSTREAM)
        return self._downstream

    async def close(self) -> None:
        await self.postgres.close()
        if self._downstream is not None:
            await self._downstream.aclose()


def _logger() -> Any:
    # Looked up per call: see demo_backend.canceller._logger.
    return structlog.get_logger()


async def counted(stats: Stats, name: str, request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, counting how it ended; a cancellation is counted and re-raised."""
    log = _logger().bind(request_id=request_id_from_headers(request.scope["headers"]), work=name)
    stats.count_work(name, "started")
    log.info("work_started")
    try:
        result = await work
    except asyncio.CancelledError:
        stats.count_work(name, "cancelled")
        log.info("work_stopped")
        raise
    stats.count_work(name, "completed")
    log.info("work_completed")
    return result


def add_work_routes(app: FastAPI, stats: Stats, resources: WorkResources) -> None:
    @app.exception_handler(WorkUnavailable)
    async def unavailable(request: Request, exc: WorkUnavailable) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=503)

    @app.get("/work/sqlite")
    async def work_sqlite(request: Request, seconds: WorkSeconds) -> dict[str, Any]:
        rows = await counted(stats, "sqlite", request, interruptible_query(seconds))
        return {"seconds": seconds, "rows": rows}

    @app.get("/work/postgres")
    async def work_postgres(request: Request, seconds: WorkSeconds) -> dict[str, Any]:
        return await counted(
            stats, "postgres", request, resources.postgres.sleep_on_server(seconds)
        )

    @app.get("/work/relay")
    async def work_relay(request: Request, seconds: WorkSeconds) -> dict[str, Any]:
        client = resources.downstream()
        request_id = request_id_from_headers(request.scope["headers"])
        answer = await counted(stats, "relay", request, relay_slow(client, seconds, request_id))
        return {"downstream": answer}

    @app.get("/work/thread")
    def work_thread(request: Request, seconds: WorkSeconds) -> dict[str, Any]:
        # A def endpoint: this body runs in Starlette's thread pool. The counters live on the
        # event loop, so they are updated there (anyio.from_thread.run_sync).
        log = _logger().bind(
            request_id=request_id_from_headers(request.scope["headers"]), work="thread"
        )
        anyio.from_thread.run_sync(stats.count_work, "thread", "started")
        log.info("work_started")
        rounds = hash_for(seconds)
        if rounds is None:
            anyio.from_thread.run_sync(stats.count_work, "thread", "cancelled")
            log.info("work_stopped")
            # The request task's cancellation, held while this thread ran, is delivered as soon
            # as it returns: this answer is never sent.
            return {"seconds": seconds, "stopped": True}
        anyio.from_thread.run_sync(stats.count_work, "thread", "completed")
        log.info("work_completed")
        return {"seconds": seconds, "rounds": rounds}
