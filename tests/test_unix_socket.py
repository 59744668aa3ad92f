"""``--upstream unix:/path``: the same forwarding and cancellation over a unix socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.upstream.address import parse_upstream
from tests.conftest import ProxyFactory
from tests.support import (
    HangupKind,
    RawConnection,
    request_bytes,
    running_stack,
)


def test_unix_upstream_needs_an_absolute_path() -> None:
    assert parse_upstream("unix:/run/app.sock").unix_path == "/run/app.sock"
    with pytest.raises(ValueError, match="absolute path"):
        parse_upstream("unix:app.sock")


async def test_requests_are_forwarded_over_a_unix_socket(
    tmp_path: Path, start_proxy: ProxyFactory
) -> None:
    path = tmp_path / "app.sock"
    received: list[bytes] = []

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nunix")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(origin, path=str(path))
    try:
        async with start_proxy(f"unix:{path}") as proxy:
            client = await RawConnection.open(proxy.address.port)
            await client.send(request_bytes("GET", "/p%41th?q=1", host="app.example"))
            response = await client.read_response()
            await client.close()
    finally:
        server.close()
        await server.wait_closed()
    assert (response.status, response.body) == (200, b"unix")
    [head] = received
    assert head.startswith(b"GET /p%41th?q=1 HTTP/1.1\r\n")
    assert b"\r\nHost: app.example\r\n" in head


@pytest.mark.parametrize("kind", ["fin", "rst"])
async def test_a_hang_up_cancels_the_backend_handler_over_a_unix_socket(
    tmp_path: Path, kind: HangupKind
) -> None:
    path = tmp_path / "backend.sock"
    async with running_stack(("--uds", str(path)), upstream=f"unix:{path}") as stack:
        client = await RawConnection.open(stack.port)
        await client.send(
            request_bytes("GET", "/slow?seconds=30", [("X-Request-ID", f"uds-{kind}")])
        )
        await stack.backend.wait_for_event("slow_started", request_id=f"uds-{kind}")
        client.hang_up(kind)
        await stack.backend.wait_for_event("handler_cancelled", request_id=f"uds-{kind}")
        line = await stack.proxy.wait_for_event("request", request_id=f"uds-{kind}")
    assert (line["status"], line["outcome"], line["upstream_closed"]) == (
        499,
        "client_hangup",
        True,
    )
