"""The two real console scripts, ``hangup-proxy`` in front of ``hangup-demo-backend``.

This is the production entry point end to end: if ``proxy.serving.server`` ever stopped turning
aiohttp's ``handler_cancellation`` on, the backend handler here would run its full 30 s and the
first test would time out (aiohttp's test server always turns it on, so only this kind of test
can tell).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import (
    HANGUP_KINDS,
    HangupKind,
    RawConnection,
    Stack,
    request_bytes,
    running_stack,
)


@pytest.fixture(params=["h11", "httptools"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    async with running_stack(("--port", "0", "--http", request.param)) as started:
        yield started
    assert not any("Traceback" in line for line in started.output)


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_backend_handler_is_cancelled_when_client_hangs_up(
    stack: Stack, kind: HangupKind
) -> None:
    client = await RawConnection.open(stack.port)
    await client.send(
        request_bytes("GET", "/slow?seconds=30", [("X-Request-ID", f"e2e-get-{kind}")])
    )
    await stack.backend.wait_for_event("slow_started", request_id=f"e2e-get-{kind}")
    client.hang_up(kind)

    cancelled = await stack.backend.wait_for_event(
        "handler_cancelled", request_id=f"e2e-get-{kind}"
    )
    line = await stack.proxy.wait_for_event("request", request_id=f"e2e-get-{kind}")

    assert cancelled["level"] == "info"
    assert (line["status"], line["outcome"], line["level"]) == (499, "client_hangup", "info")
    assert line["upstream_closed"] is True
    stats = await stack.get_json("/stats")
    assert (stats["started"], stats["cancelled"], stats["completed"]) == (1, 1, 0)


async def test_write_is_carried_to_the_end_after_the_client_hangs_up(stack: Stack) -> None:
    client = await RawConnection.open(stack.port)
    await client.send(
        request_bytes("POST", "/slow?seconds=0.3", [("X-Request-ID", "e2e-post")], b"payload")
    )
    await stack.backend.wait_for_event("slow_started", request_id="e2e-post")
    client.hang_up("rst")

    await stack.backend.wait_for_event("slow_completed", request_id="e2e-post")
    line = await stack.proxy.wait_for_event("request", request_id="e2e-post")

    assert (line["status"], line["outcome"], line["upstream_status"]) == (
        499,
        "client_hangup",
        200,
    )
    assert stack.backend.events("handler_cancelled") == []
    stats = await stack.get_json("/stats")
    assert (stats["cancelled"], stats["completed"]) == (0, 1)


async def test_a_completed_request_is_logged_once_by_the_proxy(stack: Stack) -> None:
    client = await RawConnection.open(stack.port)
    await client.send(request_bytes("GET", "/slow?seconds=0", [("X-Request-ID", "e2e-ok")]))
    response = await client.read_response()
    await client.close()
    line = await stack.proxy.wait_for_event("request", request_id="e2e-ok")

    assert response.status == 200
    assert (line["status"], line["outcome"], line["method"], line["path"]) == (
        200,
        "completed",
        "GET",
        "/slow",
    )
    assert isinstance(line["duration_ms"], float)
    assert len(stack.proxy.events("request")) == 1
