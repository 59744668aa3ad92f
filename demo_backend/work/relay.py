"""An outbound HTTP call (the shape of an LLM API call) that the hang-up closes.

The handler awaits ``GET {downstream}/slow?seconds=S`` on one shared ``httpx.AsyncClient``. When
the request task is cancelled, the ``CancelledError`` lands inside httpcore while it waits for the
answer, and httpcore closes a connection whose exchange did not reach its end rather than pool it
(``HTTP11Connection.handle_async_request`` calls ``_response_closed`` under a cancel shield; a
connection not in the DONE state is closed). The downstream therefore sees its client leave: a
demo backend behind its own hangup-proxy cancels its handler too, and one hang-up stops the chain.
An answer that completes returns its connection to the pool as usual.
"""

from __future__ import annotations

from typing import Any

import httpx

from demo_backend.work.unavailable import WorkUnavailable


def downstream_client(base_url: str) -> httpx.AsyncClient:
    """The client for ``--downstream``: no read timeout of its own (the hang-up and the proxy's
    timeouts bound the wait), a connect bound, no proxy from the environment."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(None, connect=5.0),
        trust_env=False,
        follow_redirects=False,
    )


async def relay_slow(client: httpx.AsyncClient, seconds: float, request_id: str) -> Any:
    """The downstream's answer to ``/slow?seconds=S``, as JSON; 503 when it cannot be reached."""
    try:
        response = await client.get(
            "/slow", params={"seconds": seconds}, headers={"X-Request-ID": request_id}
        )
    except httpx.TransportError as exc:
        raise WorkUnavailable(f"the downstream could not be reached: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise WorkUnavailable(f"the downstream answered {response.status_code}")
    return response.json()
