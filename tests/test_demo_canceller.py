"""``ConnectionCanceller`` on its own: plain ASGI calls, no server, exact control over timing."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from demo_backend.cancel_methods import DEFAULT_CANCEL_METHODS
from demo_backend.canceller import ConnectionCanceller, is_final_response_message
from tests.support import WAIT, watch_logs

Sent = list[Message]


def http_scope(method: str = "GET", request_id: str | None = "unit-1") -> Scope:
    headers = [(b"x-request-id", request_id.encode())] if request_id is not None else []
    return {"type": "http", "method": method, "path": "/unit", "headers": headers}


async def no_message() -> Message:
    raise AssertionError("the app under test does not read")


class Gate:
    """An inner ASGI app: optionally answers first, then waits until released."""

    def __init__(self, *, answer_first: bool = False) -> None:
        self.answer_first = answer_first
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.answer_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done", "more_body": False})
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def start(
    canceller: ConnectionCanceller, gate: Gate, scope: Scope, sent: Sent | None = None
) -> asyncio.Task[None]:
    async def send(message: Message) -> None:
        if sent is not None:
            sent.append(message)

    task = asyncio.create_task(canceller(scope, no_message, send))
    async with asyncio.timeout(WAIT):
        await gate.entered.wait()
    return task


async def finish(task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(WAIT):
        await task


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param({"type": "http.response.start", "status": 200}, False, id="start"),
        pytest.param({"type": "http.response.body", "body": b""}, True, id="body-default-final"),
        pytest.param({"type": "http.response.body", "more_body": False}, True, id="body-final"),
        pytest.param({"type": "http.response.body", "more_body": True}, False, id="body-chunk"),
        pytest.param({"type": "http.response.pathsend", "path": "/f"}, True, id="pathsend"),
        pytest.param({"type": "http.response.zerocopysend", "more_body": True}, False, id="zc"),
        pytest.param({"type": "http.response.trailers", "more_trailers": False}, False, id="tr"),
    ],
)
def test_final_response_message_is_recognised(message: Message, expected: bool) -> None:
    assert is_final_response_message(message) is expected


async def test_own_cancellation_is_absorbed_and_logged_once() -> None:
    gate = Gate()
    canceller = ConnectionCanceller(gate, DEFAULT_CANCEL_METHODS)
    with watch_logs() as logs:
        task = await start(canceller, gate, http_scope())
        canceller.connection_lost()
        await finish(task)  # returns normally: uvicorn's run_asgi sees no exception

    assert gate.cancelled.is_set()
    assert task.cancelling() == 0
    assert [dict(entry) for entry in logs.events("handler_cancelled")] == [
        {
            "event": "handler_cancelled",
            "log_level": "info",
            "request_id": "unit-1",
            "method": "GET",
            "path": "/unit",
        }
    ]
    assert canceller.in_flight_count() == 0


async def test_cancellation_requested_by_someone_else_as_well_keeps_propagating() -> None:
    # E.g. uvicorn's graceful-shutdown timeout fires in the same loop turn as the hang-up.
    gate = Gate()
    canceller = ConnectionCanceller(gate, DEFAULT_CANCEL_METHODS)
    with watch_logs() as logs:
        task = await start(canceller, gate, http_scope())
        canceller.connection_lost()
        task.cancel(msg="timeout graceful shutdown exceeded")
        with pytest.raises(asyncio.CancelledError):
            await finish(task)

    assert logs.events("handler_cancelled") == []


async def test_a_cancellation_that_is_not_ours_propagates() -> None:
    gate = Gate()
    canceller = ConnectionCanceller(gate, DEFAULT_CANCEL_METHODS)
    task = await start(canceller, gate, http_scope())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finish(task)


async def test_a_request_whose_response_was_sent_is_not_cancelled() -> None:
    gate = Gate(answer_first=True)
    canceller = ConnectionCanceller(gate, DEFAULT_CANCEL_METHODS)
    sent: Sent = []
    task = await start(canceller, gate, http_scope(), sent)
    canceller.connection_lost()
    gate.release.set()
    await finish(task)

    assert not gate.cancelled.is_set()
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]


async def test_a_method_outside_the_policy_is_not_cancelled() -> None:
    gate = Gate()
    canceller = ConnectionCanceller(gate, DEFAULT_CANCEL_METHODS)
    task = await start(canceller, gate, http_scope("POST"))
    canceller.connection_lost()
    gate.release.set()
    await finish(task)

    assert not gate.cancelled.is_set()


async def test_a_request_without_x_request_id_gets_a_generated_one() -> None:
    gate = Gate()
    canceller = ConnectionCanceller(gate, DEFAULT_CANCEL_METHODS)
    with watch_logs() as logs:
        task = await start(canceller, gate, http_scope(request_id=None))
        canceller.connection_lost()
        await finish(task)

    [line] = logs.events("handler_cancelled")
    assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
async def test_non_http_scopes_pass_through_untouched(scope_type: str) -> None:
    seen: list[tuple[Scope, Any, Any]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def send(message: Message) -> None:
        raise AssertionError("not called")

    scope: Scope = {"type": scope_type}
    await ConnectionCanceller(inner, frozenset({"*"}))(scope, no_message, send)

    assert seen == [(scope, no_message, send)]
