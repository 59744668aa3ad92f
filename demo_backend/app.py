"""The demo backend: slow handlers to hang up on, background work that must survive, an echo.

Every app made by ``create_app`` has its own ``Stats``; nothing lives in module globals, so tests
can run several apps side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from demo_backend.request_id import request_id_from_headers
from demo_backend.stats import Stats
from demo_backend.websocket_route import add_websocket_echo
from demo_backend.work.routes import WorkResources, WorkSettings, add_work_routes

Seconds = Annotated[float, Query(ge=0, le=3600, description="How long the handler sleeps.")]


def _logger() -> Any:
    # Looked up per call: see demo_backend.canceller._logger.
    return structlog.get_logger()


def body_digest(body: bytes) -> dict[str, Any]:
    """Length and SHA-256 of a request body, so a client can prove it arrived whole."""
    return {"body_bytes": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}


def stats_of(app: FastAPI) -> Stats:
    stats = app.state.stats
    if not isinstance(stats, Stats):
        raise TypeError(f"{app!r} was not made by create_app: it has no Stats")
    return stats


async def sleep_counted(stats: Stats, request: Request, seconds: float) -> None:
    """Sleep like a slow handler, counting how the sleep ended.

    A cancellation is counted and re-raised, never swallowed: whoever cancelled us (the
    cancelling protocol) decides what to log.
    """
    request_id = request_id_from_headers(request.scope["headers"])
    log = _logger().bind(request_id=request_id, method=request.method, path=request.url.path)
    stats.increment("started")
    log.info("slow_started", seconds=seconds)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        stats.increment("cancelled")
        raise
    stats.increment("completed")
    log.info("slow_completed", seconds=seconds)


async def background_sleep(stats: Stats, request_id: str, seconds: float) -> None:
    """Work that runs after the response was sent (a Starlette BackgroundTask)."""
    stats.increment("background_started")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        stats.increment("background_cancelled")
        raise
    stats.increment("background_completed")
    _logger().info("background_completed", request_id=request_id, seconds=seconds)


async def token_events(
    stats: Stats, request_id: str, events: int, interval: float
) -> AsyncIterator[bytes]:
    """Server-sent events, one every ``interval`` s, like an LLM streaming tokens.

    When the client hangs up mid-stream the cancelling protocol cancels the response task; the
    generator is closed with it and its ``finally`` records the cancellation.
    """
    stats.increment("stream_started")
    finished = False
    try:
        for number in range(events):
            yield f"id: {number}\ndata: token {number}\n\n".encode()
            await asyncio.sleep(interval)
        finished = True
    finally:
        stats.increment("stream_completed" if finished else "stream_cancelled")
        _logger().info(
            "stream_completed" if finished else "stream_cancelled", request_id=request_id
        )


def describe_request(scope: Scope, body: bytes) -> dict[str, Any]:
    """What the backend received, byte-faithful (latin-1 maps every byte to one character)."""
    return {
        "method": scope["method"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "headers": [
            [name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]
        ],
        **body_digest(body),
    }


class Echo:
    """Raw ASGI endpoint: Starlette routes every method, even unregistered ones, to ASGI classes."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await Request(scope, receive).body()
        await JSONResponse(describe_request(scope, body))(scope, receive, send)


def create_app(work: WorkSettings | None = None) -> FastAPI:
    stats = Stats()
    resources = WorkResources(work or WorkSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await resources.close()

    app = FastAPI(title="hangup demo backend", lifespan=lifespan)
    app.state.stats = stats

    @app.get("/slow")
    async def slow_get(request: Request, seconds: Seconds) -> dict[str, Any]:
        await sleep_counted(stats, request, seconds)
        return {"slept": seconds}

    @app.post("/slow")
    async def slow_post(request: Request, seconds: Seconds) -> dict[str, Any]:
        body = await request.body()
        await sleep_counted(stats, request, seconds)
        return {"slept": seconds, **body_digest(body)}

    @app.get("/background")
    async def background(request: Request, seconds: Seconds) -> JSONResponse:
        request_id = request_id_from_headers(request.scope["headers"])
        task = BackgroundTask(background_sleep, stats, request_id, seconds)
        return JSONResponse({"scheduled": seconds}, background=task)

    @app.get("/stream")
    async def stream(
        request: Request,
        events: Annotated[int, Query(ge=0, le=100_000)] = 50,
        interval: Seconds = 0.1,
    ) -> StreamingResponse:
        request_id = request_id_from_headers(request.scope["headers"])
        return StreamingResponse(
            token_events(stats, request_id, events, interval), media_type="text/event-stream"
        )

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        counts: dict[str, Any] = dict(stats.snapshot().items())
        counts["work"] = stats.work_snapshot()
        return counts

    # methods=None only means "every method" for an ASGI endpoint; the stub types every endpoint
    # as a request -> response function.
    app.router.add_route("/echo", Echo(), methods=None, include_in_schema=False)  # type: ignore[arg-type]
    add_websocket_echo(app, stats)
    add_work_routes(app, stats, resources)
    return app
