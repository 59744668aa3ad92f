"""``ConnectionCanceller`` on its own: plain ASGI calls, no server, exact control over timing."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import anyio
import anyio.to_thread
import pytest
from starlette.types import Message, Receive, Scope, Send

from demo_backend.cancel_methods import DEFAULT_CANCEL_METHODS
from demo_backend.canceller import HANGUP_CANCEL_MESSAGE, ConnectionCanceller
from demo_backend.hangup_signal import client_hung_up
from tests.support import WAIT, watch_logs

Sent = list[Message]


def http_scope(method: str = "GET", request_id: str | None = "unit-1") -> Scope:
    headers = [(b"x-request-id", request_id.encode())] if request_id is not None else []
    return {"type": "http", "method": method, "path": "/unit", "headers": headers}


async def no_message() -> Message:
    raise AssertionError("the app under test does not read")


async def no_send(message: Message) -> None:
    raise AssertionError(f"the app under test sends nothing, but sent {message['type']}")


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


class ServerCycle:
    """What uvicorn's ``RequestResponseCycle`` shows the canceller: a bound ``send`` whose object
    sets ``response_complete`` when it takes the last body message (``more_body`` false)."""

    def __init__(self) -> None:
        self.sent: Sent = []
        self.response_complete = False

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.response_complete = True


async def start(
    canceller: ConnectionCanceller, gate: Gate, scope: Scope, send: Send | None = None
) -> asyncio.Task[None]:
    """Run the request in a task of its own (a server cycle's ``send`` unless told otherwise)."""
    task = asyncio.create_task(canceller(scope, no_message, send or ServerCycle().send))
    async with asyncio.timeout(WAIT):
        await gate.entered.wait()
    return task


async def finish(task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(WAIT):
        await task


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
    cycle = ServerCycle()
    task = await start(canceller, gate, http_scope(), cycle.send)
    canceller.connection_lost()
    gate.release.set()
    await finish(task)

    assert not gate.cancelled.is_set()
    assert [message["type"] for message in cycle.sent] == [
        "http.response.start",
        "http.response.body",
    ]


async def test_a_send_that_is_not_a_server_cycles_counts_as_an_unfinished_answer() -> None:
    # Only uvicorn's cycle says when its response is complete; anything else is cancelled.
    gate = Gate(answer_first=True)
    canceller = ConnectionCanceller(gate, DEFAULT_CANCEL_METHODS)

    async def plain_send(message: Message) -> None:
        pass

    task = await start(canceller, gate, http_scope(), plain_send)
    canceller.connection_lost()
    await finish(task)

    assert gate.cancelled.is_set()


async def test_the_app_gets_the_servers_own_receive_and_send() -> None:
    seen: list[tuple[Any, Any]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((receive, send))

    cycle = ServerCycle()
    await ConnectionCanceller(inner, DEFAULT_CANCEL_METHODS)(http_scope(), no_message, cycle.send)

    assert seen == [(no_message, cycle.send)]


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


async def loop_turns(count: int = 5) -> None:
    """Let the loop run ``count`` iterations: room for a cancel that should not come to land."""
    for _ in range(count):
        await asyncio.sleep(0)


async def never() -> None:
    await asyncio.Event().wait()


async def test_a_hangup_waits_for_an_anyio_shield_and_lands_at_the_next_await_after_it() -> None:
    gate = Gate()
    steps: list[str] = []

    async def shielded(scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope(shield=True):
            await gate(scope, receive, send)
            steps.append("shield_left")
        try:
            await never()
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise

    canceller = ConnectionCanceller(shielded, DEFAULT_CANCEL_METHODS)
    with watch_logs() as logs:
        task = await start(canceller, gate, http_scope())
        canceller.connection_lost()
        await loop_turns()
        assert not gate.cancelled.is_set()
        gate.release.set()
        await finish(task)

    assert steps == ["shield_left", "cancelled"]
    assert task.cancelling() == 0
    assert [line["request_id"] for line in logs.events("handler_cancelled")] == ["unit-1"]


async def test_a_thread_sees_a_hangup_after_it_started_and_the_cancel_waits_for_its_return() -> (
    None
):
    started, may_look = threading.Event(), threading.Event()
    steps: list[str] = []

    def work() -> None:
        started.set()
        assert may_look.wait(WAIT)
        steps.append(f"thread_saw_hang_up={client_hung_up()}")

    async def threaded(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.to_thread.run_sync(work)
        steps.append("thread_returned")
        try:
            await never()
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise

    canceller = ConnectionCanceller(threaded, DEFAULT_CANCEL_METHODS)
    with watch_logs() as logs:
        task = asyncio.create_task(canceller(http_scope(), no_message, no_send))
        assert await asyncio.to_thread(started.wait, WAIT)
        canceller.connection_lost()
        await loop_turns()
        assert not task.done()  # Starlette's shielded wait for the thread holds the cancel
        may_look.set()
        await finish(task)

    assert steps == ["thread_saw_hang_up=True", "thread_returned", "cancelled"]
    assert task.cancelling() == 0
    assert len(logs.events("handler_cancelled")) == 1


async def test_a_handler_that_catches_the_cancellation_is_cancelled_again_at_its_next_await() -> (
    None
):
    gate = Gate()
    cancellations: list[str] = []

    async def stubborn(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await gate(scope, receive, send)
        except asyncio.CancelledError as first:
            cancellations.append(str(first))
        try:
            await never()
        except asyncio.CancelledError as second:
            cancellations.append(str(second))
            raise

    canceller = ConnectionCanceller(stubborn, DEFAULT_CANCEL_METHODS)
    with watch_logs() as logs:
        task = await start(canceller, gate, http_scope())
        canceller.connection_lost()
        await finish(task)

    assert len(cancellations) == 2
    assert all(HANGUP_CANCEL_MESSAGE in message for message in cancellations)
    assert task.cancelling() == 0
    assert len(logs.events("handler_cancelled")) == 1


async def test_a_hangup_cancellation_the_handler_swallows_is_taken_back_and_still_logged() -> None:
    gate = Gate()

    async def swallowing(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await gate(scope, receive, send)
        except asyncio.CancelledError:
            await send({"type": "http.response.start", "status": 499, "headers": []})

    canceller = ConnectionCanceller(swallowing, DEFAULT_CANCEL_METHODS)
    with watch_logs() as logs:
        task = await start(canceller, gate, http_scope())
        canceller.connection_lost()
        await finish(task)

    assert task.cancelling() == 0
    assert len(logs.events("handler_cancelled")) == 1


async def test_a_cancellation_by_someone_else_while_a_shield_holds_the_hangup_propagates() -> None:
    gate = Gate()

    async def shielded(scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope(shield=True):
            await gate(scope, receive, send)

    canceller = ConnectionCanceller(shielded, DEFAULT_CANCEL_METHODS)
    with watch_logs() as logs:
        task = await start(canceller, gate, http_scope())
        canceller.connection_lost()
        task.cancel(msg="timeout graceful shutdown exceeded")  # native: goes through the shield
        with pytest.raises(asyncio.CancelledError):
            await finish(task)

    assert logs.events("handler_cancelled") == []
