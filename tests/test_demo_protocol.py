"""The cancelling uvicorn protocols, against real uvicorn servers on loopback (h11 and httptools).

A Starlette probe app lets each test hold a handler (or a BackgroundTask) until it releases it,
and reports through events whether the handler started, was cancelled, or finished.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from demo_backend import hangup_signal
from demo_backend.protocol import (
    CancellingH11Protocol,
    CancellingHttpToolsProtocol,
    HttpImplementation,
    cancelling_protocol,
)
from tests.inprocess_uvicorn import InProcessServer, running_uvicorn
from tests.support import (
    HANGUP_KINDS,
    WAIT,
    HangupKind,
    LogWatch,
    RawConnection,
    request_bytes,
    watch_logs,
)


@dataclass
class Handler:
    """What one request's handler (or its background task) did, as events a test can await."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def hold(self) -> None:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        self.finished.set()


@dataclass
class ThreadWork:
    """What a request's worker thread saw of the hang-up signal, once the test let it look."""

    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    saw_hang_up: bool | None = None

    def look_when_released(self) -> None:
        self.started.set()
        if self.release.wait(WAIT):
            self.saw_hang_up = hangup_signal.client_hung_up()
        self.finished.set()


class Probe:
    """A Starlette app whose handlers wait for the test; handlers are keyed by X-Request-ID.

    Each handler also keeps the hang-up signal its request's context holds, in ``signals``.
    """

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.threads: dict[str, ThreadWork] = {}
        self.signals: dict[str, hangup_signal.HangupSignal | None] = {}
        self.app = Starlette(
            routes=[
                Route("/hold", self._held_answer, methods=["GET", "POST", "DELETE"]),
                Route("/background", self._answer_then_hold),
                Route("/thread", self._thread_answer),
                Route("/thread-background", self._answer_then_thread),
            ]
        )

    def __getitem__(self, request_id: str) -> Handler:
        return self.handlers.setdefault(request_id, Handler())

    def thread(self, request_id: str) -> ThreadWork:
        """The worker thread of a request to ``/thread`` or ``/thread-background``."""
        return self.threads.setdefault(request_id, ThreadWork())

    def _request_id(self, request: Request) -> str:
        request_id = request.headers["x-request-id"]
        self.signals[request_id] = hangup_signal.bound()
        return request_id

    async def _held_answer(self, request: Request) -> PlainTextResponse:
        await request.body()
        await self[self._request_id(request)].hold()
        return PlainTextResponse("released")

    async def _answer_then_hold(self, request: Request) -> PlainTextResponse:
        handler = self[self._request_id(request)]
        return PlainTextResponse("answered", background=BackgroundTask(handler.hold))

    def _thread_answer(self, request: Request) -> PlainTextResponse:
        # A `def` endpoint: Starlette runs it in a worker thread, in a copy of the task's context.
        work = self.thread(self._request_id(request))
        work.look_when_released()
        return PlainTextResponse("looked")

    async def _answer_then_thread(self, request: Request) -> PlainTextResponse:
        work = self.thread(self._request_id(request))
        return PlainTextResponse("answered", background=BackgroundTask(work.look_when_released))


@dataclass
class Served:
    server: InProcessServer
    probe: Probe
    lost: asyncio.Event
    """Set when the server's protocol has processed a ``connection_lost``."""

    @property
    def port(self) -> int:
        return self.server.port


def observed(protocol: type[Any], lost: asyncio.Event) -> type[Any]:
    """``protocol`` whose ``connection_lost`` also sets ``lost``: the server saw the hang-up."""

    def connection_lost(self: Any, exc: Exception | None) -> None:
        protocol.connection_lost(self, exc)
        lost.set()

    return type(protocol.__name__, (protocol,), {"connection_lost": connection_lost})


@pytest.fixture(params=["h11", "httptools"])
def http(request: pytest.FixtureRequest) -> HttpImplementation:
    implementation: HttpImplementation = request.param
    return implementation


@pytest.fixture(autouse=True)
def uvicorn_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    # Another test may have run uvicorn with its default log config (propagate False).
    logging.getLogger("uvicorn").propagate = True
    return caplog


@asynccontextmanager
async def serving(
    http: HttpImplementation, cancel_methods: frozenset[str] | None = None, **config: Any
) -> AsyncIterator[Served]:
    probe = Probe()
    lost = asyncio.Event()
    protocol = observed(cancelling_protocol(http, cancel_methods), lost)
    async with running_uvicorn(probe.app, http=protocol, **config) as server:
        yield Served(server, probe, lost)


async def wait(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT):
        await event.wait()


async def wait_for_thread(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, WAIT), "the worker thread did not get there"


def assert_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    problems = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert problems == [], [record.getMessage() for record in problems]
    assert "Exception in ASGI application" not in caplog.text
    assert "Traceback" not in caplog.text


def cancelled_lines(logs: LogWatch) -> list[dict[str, Any]]:
    return [dict(entry) for entry in logs.events("handler_cancelled")]


async def start_request(
    served: Served, method: str, path: str, request_id: str, body: bytes = b""
) -> RawConnection:
    """Open a connection, send the request, and return once its handler is running."""
    connection = await RawConnection.open(served.port)
    await connection.send(request_bytes(method, path, [("X-Request-ID", request_id)], body))
    await wait(served.probe[request_id].started)
    return connection


# --- cancellation --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_get_handler_is_cancelled_when_client_hangs_up(
    http: HttpImplementation, kind: HangupKind, uvicorn_logs: pytest.LogCaptureFixture
) -> None:
    with watch_logs() as logs:
        async with serving(http) as served:
            connection = await start_request(served, "GET", "/hold", "get-1")
            connection.hang_up(kind)
            await wait(served.probe["get-1"].cancelled)
            await logs.wait_for("handler_cancelled")

    assert not served.probe["get-1"].finished.is_set()
    assert cancelled_lines(logs) == [
        {
            "event": "handler_cancelled",
            "log_level": "info",
            "request_id": "get-1",
            "method": "GET",
            "path": "/hold",
        }
    ]
    assert_no_errors(uvicorn_logs)


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_post_handler_runs_to_completion_when_client_hangs_up(
    http: HttpImplementation, kind: HangupKind, uvicorn_logs: pytest.LogCaptureFixture
) -> None:
    with watch_logs() as logs:
        async with serving(http) as served:
            connection = await start_request(served, "POST", "/hold", "post-1", b"payload")
            connection.hang_up(kind)
            await wait(served.lost)
            served.probe["post-1"].release.set()
            await wait(served.probe["post-1"].finished)

    assert not served.probe["post-1"].cancelled.is_set()
    assert cancelled_lines(logs) == []
    assert_no_errors(uvicorn_logs)


async def test_star_policy_cancels_post_too(http: HttpImplementation) -> None:
    with watch_logs() as logs:
        async with serving(http, cancel_methods=frozenset({"*"})) as served:
            connection = await start_request(served, "POST", "/hold", "post-star", b"payload")
            connection.hang_up("fin")
            await wait(served.probe["post-star"].cancelled)
            line = await logs.wait_for("handler_cancelled")

    assert line["method"] == "POST"
    assert line["request_id"] == "post-star"


async def test_explicit_policy_cancels_only_the_methods_it_names(http: HttpImplementation) -> None:
    async with serving(http, cancel_methods=frozenset({"DELETE"})) as served:
        deleting = await start_request(served, "DELETE", "/hold", "delete-1")
        getting = await start_request(served, "GET", "/hold", "get-kept")
        deleting.hang_up("fin")
        getting.hang_up("fin")
        await wait(served.probe["delete-1"].cancelled)
        served.probe["get-kept"].release.set()
        await wait(served.probe["get-kept"].finished)

    assert not served.probe["get-kept"].cancelled.is_set()


async def test_hangup_right_after_the_request_still_cancels_the_handler(
    http: HttpImplementation,
) -> None:
    # The request and the FIN arrive together: the task must be registered before the loss.
    async with serving(http) as served:
        connection = await RawConnection.open(served.port)
        connection.writer.write(request_bytes("GET", "/hold", [("X-Request-ID", "at-once")]))
        connection.hang_up("fin")
        await wait(served.probe["at-once"].cancelled)


async def test_cancellation_works_with_limit_concurrency(
    http: HttpImplementation, uvicorn_logs: pytest.LogCaptureFixture
) -> None:
    # The seed replaced uvicorn's task set with an object without __len__: every request failed.
    async with serving(http, limit_concurrency=10) as served:
        connection = await start_request(served, "GET", "/hold", "limited")
        other = await RawConnection.open(served.port)
        await other.send(request_bytes("GET", "/background", [("X-Request-ID", "answered")]))
        response = await other.read_response()
        await other.close()
        connection.hang_up("rst")
        await wait(served.probe["limited"].cancelled)
        served.probe["answered"].release.set()

    assert (response.status, response.body) == (200, b"answered")
    assert_no_errors(uvicorn_logs)


# --- a complete response is never cancelled ------------------------------------------------------


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_background_task_survives_a_client_that_closes_after_reading(
    http: HttpImplementation, kind: HangupKind
) -> None:
    async with serving(http) as served:
        connection = await RawConnection.open(served.port)
        await connection.send(request_bytes("GET", "/background", [("X-Request-ID", "bg")]))
        response = await connection.read_response()
        await wait(served.probe["bg"].started)
        connection.hang_up(kind)
        await wait(served.lost)
        served.probe["bg"].release.set()
        await wait(served.probe["bg"].finished)

    assert response.status == 200
    assert not served.probe["bg"].cancelled.is_set()


async def test_background_task_survives_a_connection_close_request(
    http: HttpImplementation,
) -> None:
    async with serving(http) as served:
        connection = await RawConnection.open(served.port)
        headers = [("X-Request-ID", "bg-close"), ("Connection", "close")]
        await connection.send(request_bytes("GET", "/background", headers))
        response = await connection.read_response()
        await wait(served.lost)  # uvicorn closed the connection after the response
        served.probe["bg-close"].release.set()
        await wait(served.probe["bg-close"].finished)
        await connection.close()

    assert response.header("connection") == "close"
    assert not served.probe["bg-close"].cancelled.is_set()


async def test_background_task_survives_graceful_shutdown(http: HttpImplementation) -> None:
    async with serving(http) as served:
        connection = await RawConnection.open(served.port)
        await connection.send(request_bytes("GET", "/background", [("X-Request-ID", "bg-stop")]))
        await connection.read_response()
        await wait(served.probe["bg-stop"].started)
        served.server.server.should_exit = True
        await wait(served.lost)  # the shutdown closed the idle keep-alive connection
        served.probe["bg-stop"].release.set()
        await served.server.shut_down()
        await connection.close()

    assert served.probe["bg-stop"].finished.is_set()
    assert not served.probe["bg-stop"].cancelled.is_set()


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_hangup_on_keep_alive_connection_cancels_only_the_in_flight_request(
    http: HttpImplementation, kind: HangupKind, uvicorn_logs: pytest.LogCaptureFixture
) -> None:
    with watch_logs() as logs:
        async with serving(http) as served:
            connection = await RawConnection.open(served.port)
            await connection.send(request_bytes("GET", "/background", [("X-Request-ID", "first")]))
            await connection.read_response()
            await wait(served.probe["first"].started)
            await connection.send(request_bytes("GET", "/hold", [("X-Request-ID", "second")]))
            await wait(served.probe["second"].started)
            connection.hang_up(kind)
            await wait(served.probe["second"].cancelled)
            await logs.wait_for("handler_cancelled")
            served.probe["first"].release.set()
            await wait(served.probe["first"].finished)

    assert not served.probe["first"].cancelled.is_set()
    assert [line["request_id"] for line in cancelled_lines(logs)] == ["second"]
    assert_no_errors(uvicorn_logs)


# --- the hang-up signal that threads read --------------------------------------------------------


async def test_requests_one_after_another_share_one_signal_and_a_thread_still_sees_its_hang_up(
    http: HttpImplementation, uvicorn_logs: pytest.LogCaptureFixture
) -> None:
    # The reuse is what keeps the protocol's objects per request away from the garbage collector
    # (canceller module docstring); the second request must still see its own hang-up.
    with watch_logs() as logs:
        async with serving(http) as served:
            connection = await RawConnection.open(served.port)
            await connection.send(request_bytes("GET", "/background", [("X-Request-ID", "one")]))
            await connection.read_response()
            await wait(served.probe["one"].started)
            served.probe["one"].release.set()
            await wait(served.probe["one"].finished)
            await connection.send(request_bytes("GET", "/thread", [("X-Request-ID", "two")]))
            work = served.probe.thread("two")
            await wait_for_thread(work.started)
            connection.hang_up("fin")
            await wait(served.lost)
            work.release.set()
            await wait_for_thread(work.finished)
            await logs.wait_for("handler_cancelled")

    assert served.probe.signals["two"] is served.probe.signals["one"] is not None
    assert work.saw_hang_up is True
    assert [line["request_id"] for line in cancelled_lines(logs)] == ["two"]
    assert_no_errors(uvicorn_logs)


async def test_a_background_thread_of_an_answered_request_does_not_see_the_next_ones_hang_up(
    http: HttpImplementation, uvicorn_logs: pytest.LogCaptureFixture
) -> None:
    async with serving(http) as served:
        connection = await RawConnection.open(served.port)
        headers = [("X-Request-ID", "answered")]
        await connection.send(request_bytes("GET", "/thread-background", headers))
        await connection.read_response()
        work = served.probe.thread("answered")
        await wait_for_thread(work.started)
        await connection.send(request_bytes("GET", "/hold", [("X-Request-ID", "next")]))
        await wait(served.probe["next"].started)
        connection.hang_up("rst")
        await wait(served.probe["next"].cancelled)
        work.release.set()
        await wait_for_thread(work.finished)

    assert served.probe.signals["next"] is not served.probe.signals["answered"]
    assert work.saw_hang_up is False
    assert_no_errors(uvicorn_logs)


async def test_a_pipelined_request_is_cancelled_under_its_own_signal_and_id(
    http: HttpImplementation, uvicorn_logs: pytest.LogCaptureFixture
) -> None:
    # uvicorn starts the second request from the first one's task, whose signal is still claimed.
    with watch_logs() as logs:
        async with serving(http) as served:
            connection = await RawConnection.open(served.port)
            await connection.send(
                request_bytes("GET", "/background", [("X-Request-ID", "first")])
                + request_bytes("GET", "/hold", [("X-Request-ID", "second")])
            )
            await connection.read_response()
            await wait(served.probe["second"].started)
            connection.hang_up("fin")
            await wait(served.probe["second"].cancelled)
            await logs.wait_for("handler_cancelled")
            served.probe["first"].release.set()
            await wait(served.probe["first"].finished)

    first, second = served.probe.signals["first"], served.probe.signals["second"]
    assert first is not None
    assert second is not None
    assert first is not second
    assert (first.hung_up, second.hung_up) == (False, True)
    assert [line["request_id"] for line in cancelled_lines(logs)] == ["second"]
    assert_no_errors(uvicorn_logs)


async def test_a_server_that_starts_each_task_in_an_empty_context_still_cancels(
    http: HttpImplementation,
) -> None:
    # uvicorn's reset_contextvars: no signal comes with the task, so the wrapper binds its own.
    async with serving(http, reset_contextvars=True) as served:
        connection = await start_request(served, "GET", "/hold", "fresh-context")
        connection.hang_up("fin")
        await wait(served.probe["fresh-context"].cancelled)

    signal = served.probe.signals["fresh-context"]
    assert signal is not None
    assert signal.hung_up


# --- other parties' cancellations ----------------------------------------------------------------


async def test_shutdown_timeout_cancellation_is_not_swallowed(
    http: HttpImplementation, uvicorn_logs: pytest.LogCaptureFixture
) -> None:
    with watch_logs() as logs:
        async with serving(http, timeout_graceful_shutdown=0) as served:
            connection = await start_request(served, "GET", "/hold", "at-shutdown")
            await served.server.shut_down()
            response = await connection.read_response()
            await connection.close()

    assert served.probe["at-shutdown"].cancelled.is_set()
    # uvicorn saw the CancelledError (its own), so it answered 500 and logged it as before.
    assert response.status == 500
    assert "Exception in ASGI application" in uvicorn_logs.text
    assert cancelled_lines(logs) == []


async def test_protocol_classes_default_to_the_environment_policy() -> None:
    # Read at import; the test environment does not set HANGUP_CANCEL_METHODS.
    for protocol in (CancellingH11Protocol, CancellingHttpToolsProtocol):
        assert protocol.cancel_methods == frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
    custom = cancelling_protocol("h11", frozenset({"PUT"}))
    assert issubclass(custom, CancellingH11Protocol)
    assert custom.cancel_methods == frozenset({"PUT"})
    assert CancellingH11Protocol.cancel_methods != custom.cancel_methods
