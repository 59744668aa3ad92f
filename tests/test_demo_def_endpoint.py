"""A ``def`` endpoint's thread and the ``handler_cancelled`` line, on a real uvicorn backend.

Starlette runs a ``def`` endpoint with ``anyio.to_thread.run_sync``, whose wait is shielded. The
canceller cancels through an anyio cancel scope, so the cancellation waits for the thread, and
``handler_cancelled`` (a claim that the handler has stopped) comes after the thread's last step.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI

from demo_backend.canceller import LOGGER_NAME
from demo_backend.protocol import HttpImplementation, cancelling_protocol
from tests.inprocess_uvicorn import running_uvicorn
from tests.support import WAIT, RawConnection, request_bytes, watch_logs

WORK_AFTER_HANGUP = 0.3  # seconds the thread goes on working once the connection is lost


class Transcript(logging.Handler):
    """What happened, in order: the endpoint's own steps and the protocol's log records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.steps: list[str] = []
        self._lock = threading.Lock()

    def add(self, step: str) -> None:
        with self._lock:
            self.steps.append(step)

    def emit(self, record: logging.LogRecord) -> None:
        self.add(str(getattr(record, "event", record.getMessage())))


def busy_app(transcript: Transcript, started: threading.Event, lost: threading.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/busy")
    def busy() -> dict[str, int]:
        transcript.add("thread_started")
        started.set()
        assert lost.wait(WAIT)
        # Keeps working after the hang-up and never asks hangup_signal.client_hung_up(): a
        # handler that cannot be stopped, only waited for.
        rounds = 0
        deadline = time.monotonic() + WORK_AFTER_HANGUP
        while time.monotonic() < deadline:
            hashlib.sha256(b"x" * 4096).digest()
            rounds += 1
        transcript.add("thread_returned")
        return {"rounds": rounds}

    return app


def losing(protocol: type[Any], lost: threading.Event) -> type[Any]:
    def connection_lost(self: Any, exc: Exception | None) -> None:
        protocol.connection_lost(self, exc)
        lost.set()

    return type(protocol.__name__, (protocol,), {"connection_lost": connection_lost})


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_handler_cancelled_is_logged_only_after_a_def_endpoints_thread_returned(
    http: HttpImplementation,
) -> None:
    transcript = Transcript()
    started, lost = threading.Event(), threading.Event()
    cancel_logger = logging.getLogger(LOGGER_NAME)
    cancel_logger.addHandler(transcript)
    try:
        with watch_logs() as logs:
            protocol = losing(cancelling_protocol(http), lost)
            app = busy_app(transcript, started, lost)
            async with running_uvicorn(app, http=protocol) as server:
                connection = await RawConnection.open(server.port)
                await connection.send(request_bytes("GET", "/busy", [("X-Request-ID", "def-1")]))
                assert await asyncio.to_thread(started.wait, WAIT)
                hung_up_at = time.monotonic()
                connection.hang_up("fin")
                line = await logs.wait_for("handler_cancelled", request_id="def-1")
                logged_after = time.monotonic() - hung_up_at
    finally:
        cancel_logger.removeHandler(transcript)

    assert transcript.steps == ["thread_started", "thread_returned", "handler_cancelled"]
    assert logged_after >= WORK_AFTER_HANGUP
    assert (line["method"], line["path"]) == ("GET", "/busy")
