"""proxy.websocket.handshake: which requests are tunnelled, which 101 is spliced, and the heads
written.

How the upstream's answer is parsed (llhttp, through ``proxy.upstream.connection``) is tested end to
end in ``tests/test_websocket.py``.
"""

from __future__ import annotations

import pytest

from proxy.websocket.handshake import (
    asks_for_websocket,
    switches_to_websocket,
    switching_protocols_head,
    upstream_handshake_head,
)
from proxy.wire.headers import request_target


@pytest.mark.parametrize(
    ("method", "version", "upgrade", "connection", "tunnelled"),
    [
        pytest.param("GET", (1, 1), ["websocket"], ["Upgrade"], True, id="websocket"),
        pytest.param("GET", (1, 1), ["WebSocket"], ["keep-alive, upgrade"], True, id="any-case"),
        pytest.param("GET", (1, 1), ["h2c"], ["Upgrade, HTTP2-Settings"], False, id="h2c"),
        pytest.param("GET", (1, 1), ["websocket"], [], False, id="upgrade-not-nominated"),
        pytest.param("POST", (1, 1), ["websocket"], ["Upgrade"], False, id="post"),
        pytest.param("GET", (1, 0), ["websocket"], ["Upgrade"], False, id="http-1.0"),
        pytest.param("GET", (1, 1), ["websocket", "h2c"], ["Upgrade"], False, id="two-upgrades"),
        pytest.param("GET", (1, 1), ["websocket, h2c"], ["Upgrade"], False, id="upgrade-list"),
    ],
)
def test_only_a_get_http11_websocket_upgrade_is_tunnelled(
    method: str,
    version: tuple[int, int],
    upgrade: list[str],
    connection: list[str],
    tunnelled: bool,
) -> None:
    assert asks_for_websocket(method, version, upgrade, connection) is tunnelled


def test_upstream_head_keeps_the_target_and_end_to_end_fields_and_adds_the_upgrade() -> None:
    raw = [
        (b"Host", b"example.test"),
        (b"Connection", b"Upgrade, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"Sec-WebSocket-Protocol", b"a, b"),
    ]
    head = upstream_handshake_head(
        request_target("/p%2F?q= 1"), raw, client_ip="10.0.0.1", request_id="rid"
    )
    assert head.split(b"\r\n") == [
        b"GET /p%2F?q= 1 HTTP/1.1",
        b"Host: example.test",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Protocol: a, b",
        b"X-Forwarded-For: 10.0.0.1",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: example.test",
        b"X-Request-ID: rid",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"",
        b"",
    ]


def test_101_head_for_the_client_keeps_the_upstreams_fields_and_drops_hop_by_hop() -> None:
    raw = [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]
    assert switching_protocols_head("Switching Protocols", raw).split(b"\r\n") == [
        b"HTTP/1.1 101 Switching Protocols",
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"",
        b"",
    ]


def test_a_101_without_a_reason_gets_the_standard_one() -> None:
    head = switching_protocols_head("", [(b"Upgrade", b"websocket")])
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


@pytest.mark.parametrize(
    ("upgrade", "switches"),
    [
        pytest.param([b"websocket"], True, id="websocket"),
        pytest.param([b" WebSocket "], True, id="any-case-and-spaces"),
        pytest.param([b"h2c"], False, id="h2c"),
        pytest.param([b"websocket", b"websocket"], False, id="repeated"),
        pytest.param([b"websocket, h2c"], False, id="list"),
        pytest.param([], False, id="none"),
    ],
)
def test_only_a_101_to_websocket_is_spliced(upgrade: list[bytes], switches: bool) -> None:
    raw = [(b"Connection", b"Upgrade"), *((b"Upgrade", value) for value in upgrade)]
    assert switches_to_websocket(raw) is switches
