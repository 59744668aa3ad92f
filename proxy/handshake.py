"""The WebSocket opening handshake as the proxy relays it (RFC 6455 §4; no I/O; table-tested).

The proxy writes the upstream request head and reads the upstream response head itself, because
after a ``101 Switching Protocols`` the same socket carries frames, which an HTTP client library
would not hand over. The rules are the proxy's usual ones (``proxy.headers``): the client's
end-to-end fields in order, the forwarding fields, hop-by-hop fields stripped both ways. The
exceptions are the two hop-by-hop fields the upgrade itself needs, ``Upgrade: websocket`` and
``Connection: Upgrade`` (RFC 9110 §7.8), which each hop writes afresh. ``Sec-WebSocket-Key``,
``-Version``, ``-Protocol`` and ``-Extensions`` are end-to-end and pass untouched, and so does the
upstream's ``Sec-WebSocket-Accept``: the client checks it against its own key (§4.2.2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.headers import (
    RawHeaders,
    downstream_response_headers,
    nominated_by_connection,
    upstream_request_headers,
)

_UPGRADE_FIELDS = ("Upgrade: websocket", "Connection: Upgrade")

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
_FIELD_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")


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
    target: str, raw: RawHeaders, *, client_ip: str | None, request_id: str
) -> bytes:
    """The request head to send upstream: request target byte for byte, then the fields."""
    fields = upstream_request_headers(raw, client_ip=client_ip, request_id=request_id)
    lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.items())]
    return "\r\n".join([*lines, *_UPGRADE_FIELDS, "", ""]).encode("latin-1")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...]

    def values(self, name: bytes) -> list[str]:
        lowered = name.lower()
        return [value.decode("latin-1") for key, value in self.headers if key.lower() == lowered]

    @property
    def switches_to_websocket(self) -> bool:
        """A 101 whose ``Upgrade`` is websocket: anything else cannot be spliced to this client."""
        upgrade = self.values(b"upgrade")
        return self.status == 101 and [value.strip().lower() for value in upgrade] == ["websocket"]


class BadResponseHeadError(ValueError):
    """The upstream's answer is not an HTTP/1.x response head we can relay."""


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse a response head ending in an empty line (RFC 9112 §4, §5); strict, no obs-fold."""
    lines = head.split(b"\r\n")
    if lines[-2:] != [b"", b""]:
        raise BadResponseHeadError("the response head does not end in an empty line")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise BadResponseHeadError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    fields = []
    for line in lines[1:-2]:
        field = _FIELD_LINE.fullmatch(line)
        if field is None:
            raise BadResponseHeadError(f"malformed header field line: {line[:80]!r}")
        fields.append((field[1], field[2]))
    reason = (status[2] or b"").decode("latin-1")
    return ResponseHead(int(status[1]), reason, tuple(fields))


def switching_protocols_head(response: ResponseHead) -> bytes:
    """The 101 head for the client: the upstream's end-to-end fields, then the upgrade fields."""
    fields = downstream_response_headers(response.headers)
    reason = response.reason or "Switching Protocols"
    lines = [f"HTTP/1.1 101 {reason}", *(f"{name}: {value}" for name, value in fields.items())]
    return "\r\n".join([*lines, *_UPGRADE_FIELDS, "", ""]).encode("latin-1")
