"""proxy.handshake: which requests are tunnelled, and the heads written and read."""

from __future__ import annotations

import pytest

from proxy.handshake import (
    BadResponseHeadError,
    asks_for_websocket,
    parse_response_head,
    switching_protocols_head,
    upstream_handshake_head,
)


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
    head = upstream_handshake_head("/p%2F?q= 1", raw, client_ip="10.0.0.1", request_id="rid")
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
    response = parse_response_head(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\n"
        b"X-Hop: 1\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    assert response.switches_to_websocket
    assert switching_protocols_head(response).split(b"\r\n") == [
        b"HTTP/1.1 101 Switching Protocols",
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"",
        b"",
    ]


@pytest.mark.parametrize(
    ("head", "status", "switches"),
    [
        pytest.param(b"HTTP/1.1 403 Forbidden\r\n\r\n", 403, False, id="refusal"),
        pytest.param(b"HTTP/1.1 101 \r\nUpgrade: h2c\r\n\r\n", 101, False, id="101-to-h2c"),
        pytest.param(b"HTTP/1.0 101\r\nUpgrade: websocket\r\n\r\n", 101, True, id="no-reason"),
    ],
)
def test_response_heads_are_parsed(head: bytes, status: int, switches: bool) -> None:
    response = parse_response_head(head)
    assert (response.status, response.switches_to_websocket) == (status, switches)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"SSH-2.0-OpenSSH\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/2 101\r\n\r\n", id="http-2"),
        pytest.param(b"HTTP/1.1 101 OK\r\nUpgrade : websocket\r\n\r\n", id="space-before-colon"),
        pytest.param(b"HTTP/1.1 101 OK\r\nA: b\r\n folded\r\n\r\n", id="obs-fold"),
        pytest.param(b"HTTP/1.1 101 OK\r\nA: b\rc\r\n\r\n", id="bare-cr"),
        pytest.param(b"HTTP/1.1 101 OK\r\n", id="unterminated"),
    ],
)
def test_malformed_response_heads_are_refused(head: bytes) -> None:
    with pytest.raises(BadResponseHeadError):
        parse_response_head(head)
