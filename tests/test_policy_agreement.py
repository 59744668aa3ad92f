"""One policy for both halves: the backend carries out what the proxy decided (issue 14).

Real ``hangup-proxy`` with route rules in front of a real ``hangup-demo-backend`` that trusts the
proxy's ``Hangup-Decision`` (``--trust-decision-header``), on both uvicorn HTTP implementations.
A ``POST ...=cancel`` rule cancels the backend's handler, which the backend's own method list never
would; a ``GET ...=never`` rule lets the handler complete, which the method list would have
cancelled. A request that reaches the backend directly, without the header, keeps the method list.
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

RULES = ("--cancel-route", "POST /slow=cancel", "--cancel-route", "GET /slow=never")


@pytest.fixture(params=["h11", "httptools"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    backend_args = ("--port", "0", "--http", request.param, "--trust-decision-header")
    async with running_stack(backend_args, proxy_args=RULES) as started:
        yield started
    assert not any("Traceback" in line for line in started.output)


async def hang_up_during(
    port: int, method: str, target: str, request_id: str, kind: HangupKind, stack: Stack
) -> None:
    client = await RawConnection.open(port)
    body = b"{}" if method == "POST" else b""
    await client.send(request_bytes(method, target, [("X-Request-ID", request_id)], body))
    await stack.backend.wait_for_event("slow_started", request_id=request_id)
    client.hang_up(kind)


async def slow_counts(stack: Stack) -> tuple[int, int, int]:
    stats = await stack.get_json("/stats")
    return stats["started"], stats["cancelled"], stats["completed"]


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_a_post_the_proxy_cancels_is_cancelled_in_the_backend_too(
    stack: Stack, kind: HangupKind
) -> None:
    request_id = f"agree-post-{kind}"
    await hang_up_during(stack.port, "POST", "/slow?seconds=30", request_id, kind, stack)

    await stack.backend.wait_for_event("handler_cancelled", request_id=request_id)
    line = await stack.proxy.wait_for_event("request", request_id=request_id)

    assert (line["policy_rule"], line["policy_action"]) == ("route-1", "cancel")
    assert await slow_counts(stack) == (1, 1, 0)


@pytest.mark.parametrize("kind", HANGUP_KINDS)
async def test_a_get_the_proxy_carries_to_the_end_completes_in_the_backend(
    stack: Stack, kind: HangupKind
) -> None:
    request_id = f"agree-get-{kind}"
    await hang_up_during(stack.port, "GET", "/slow?seconds=0.3", request_id, kind, stack)

    await stack.backend.wait_for_event("slow_completed", request_id=request_id)
    line = await stack.proxy.wait_for_event("request", request_id=request_id)

    assert (line["policy_rule"], line["policy_action"]) == ("route-2", "never")
    assert not stack.backend.events("handler_cancelled")
    assert await slow_counts(stack) == (1, 0, 1)


async def test_a_post_straight_to_the_backend_keeps_the_method_list(stack: Stack) -> None:
    await hang_up_during(
        stack.backend_port, "POST", "/slow?seconds=0.3", "direct-post", "fin", stack
    )

    await stack.backend.wait_for_event("slow_completed", request_id="direct-post")

    assert not stack.backend.events("handler_cancelled")
    assert await slow_counts(stack) == (1, 0, 1)


async def test_a_get_straight_to_the_backend_is_still_cancelled(stack: Stack) -> None:
    await hang_up_during(stack.backend_port, "GET", "/slow?seconds=30", "direct-get", "rst", stack)

    await stack.backend.wait_for_event("handler_cancelled", request_id="direct-get")

    assert await slow_counts(stack) == (1, 1, 0)


async def test_without_trust_the_backend_finishes_a_post_the_proxy_cancelled() -> None:
    """Why the deployments turn trust on: the proxy closes, the method list keeps the POST."""
    async with running_stack(proxy_args=RULES) as stack:
        await hang_up_during(stack.port, "POST", "/slow?seconds=0.3", "untrusted", "fin", stack)
        await stack.backend.wait_for_event("slow_completed", request_id="untrusted")
        proxy_line = await stack.proxy.wait_for_event("request", request_id="untrusted")

        assert proxy_line["upstream_closed"] is True
        assert not stack.backend.events("handler_cancelled")
