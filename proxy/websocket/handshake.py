"""The WebSocket opening handshake as the proxy relays it (RFC 6455 §4; no I/O; table-tested).

The proxy writes the upstream request head itself and reads the answer with its own upstream
client (``proxy.upstream.connection``, llhttp) in upgrade mode, because after a ``101 Switching
Protocols`` the same socket carries frames, which an HTTP client library would not hand over. The
rules are the proxy's usual ones (``proxy.wire.headers``): the client's end-to-end fields in order,
the forwarding fields, hop-by-hop fields stripped both ways. The exceptions are the two hop-by-hop
fields the upgrade itself needs, ``Upgrade: websocket`` and ``Connection: Upgrade`` (RFC 9110
§7.8), which each hop writes afresh. ``Sec-WebSocket-Key``, ``-Version``, ``-Protocol`` and
``-Extensions`` are end-to-end and pass untouched, and so does the upstream's
``Sec-WebSocket-Accept``: the client checks it against its own key (§4.2.2).
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.wire.headers import (
    RawHeaders,
    RequestTarget,
    downstream_response_fields,
    nominated_by_connection,
    request_head,
    upstream_request_fields,
)

_UPGRADE_FIELDS = ("Upgrade: websocket", "Connection: Upgrade")


def asks_for_websocket(
    method: str, version: tuple[int, int], upgrade: Sequence[str], connection: Sequence[str]
) -> bool:
    """A request to tunnel: ``GET`` over HTTP/1.1 with ``Upgrade: websocket`` (RFC 6455 §4.1).

    ``Connection`` must nominate ``upgrade`` too: without it, aiohttp's parser does not switch the
    connection to raw bytes, and neither may we (RFC 9110 §7.8). Anything else that asks for an
    upgrade (h2c, ...) is forwarded as a plain request with Upgrade stripped.
    """
    if method != "GET" or version != (1, 1) or len(upgrade) != 1:
        return False
    protocol = upgrade[0].strip()
    return (
        protocol.isascii()
        and protocol.lower() == "websocket"
        and "upgrade" in nominated_by_connection(connection)
    )


def upstream_handshake_head(
    target: RequestTarget, raw: RawHeaders, *, client_ip: str | None, request_id: str
) -> bytes:
    """The request head to send upstream: request target byte for byte, then the fields."""
    fields = upstream_request_fields(
        raw, client_ip=client_ip, request_id=request_id, authority=target.authority
    )
    return request_head(f"GET {target.origin} HTTP/1.1", fields, *_UPGRADE_FIELDS)


def switches_to_websocket(raw: RawHeaders) -> bool:
    """Whether a 101's ``Upgrade`` is websocket: anything else cannot be spliced to this client.

    llhttp has checked that ``Upgrade`` and ``Connection: upgrade`` are there (RFC 9110 §7.8).
    """
    upgrade = [value.strip().lower() for name, value in raw if name.lower() == b"upgrade"]
    return upgrade == [b"websocket"]


def switching_protocols_head(reason: str, raw: RawHeaders) -> bytes:
    """The 101 head for the client: the upstream's end-to-end fields, then the upgrade fields."""
    fields = downstream_response_fields(raw)
    lines = [
        f"HTTP/1.1 101 {reason or 'Switching Protocols'}",
        *(f"{name}: {value}" for name, value in fields),
    ]
    return "\r\n".join([*lines, *_UPGRADE_FIELDS, "", ""]).encode("latin-1")
