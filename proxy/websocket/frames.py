"""Just enough of RFC 6455 framing to close a spliced WebSocket properly (no I/O; table-tested).

The tunnel in ``proxy.websocket.tunnels`` copies bytes and never decodes messages. It only needs to
know, for each direction, whether the bytes so far end on a frame boundary and whether a Close frame
has passed: then, when one side vanishes, it can tell the other side why with a Close frame of
its own (RFC 6455 §7.1.7 "Fail the WebSocket Connection") without cutting a frame in half or
sending a second Close (§5.5.1 forbids anything after a Close).
"""

from __future__ import annotations

import secrets

OPCODE_CLOSE = 0x8

CLOSE_GOING_AWAY = 1001
"""RFC 6455 §7.4.1: an endpoint is going away (its peer vanished, or the proxy is shutting down)."""
CLOSE_INTERNAL_ERROR = 1011
"""RFC 6455 §7.4.1: the server hit an unexpected condition (the upstream vanished mid-session)."""

_FIN = 0x80
_MASK = 0x80
_LENGTH_16 = 126
_LENGTH_64 = 127


def header_size(head: bytes | bytearray) -> int:
    """Bytes in a frame header given its first bytes (RFC 6455 §5.2); at least 2."""
    if len(head) < 2:
        return 2
    length7 = head[1] & 0x7F
    size = 2 + (2 if length7 == _LENGTH_16 else 8 if length7 == _LENGTH_64 else 0)
    return size + (4 if head[1] & _MASK else 0)


class FrameTracker:
    """Follows frame boundaries in one direction of a WebSocket byte stream.

    ``feed`` takes the bytes in the order they are forwarded, split anywhere. Payloads are skipped,
    not buffered; of a Close frame the first two payload bytes (its status code) are kept.
    """

    def __init__(self) -> None:
        self._head = bytearray()
        self._remaining = 0
        self._opcode = 0
        self._mask = b""
        self._offset = 0
        self._close_payload = bytearray()
        self.close_seen = False
        """A whole Close frame has passed."""
        self.close_code: int | None = None
        """Its status code; None when it carried none (RFC 6455 §7.1.5: reported as 1005)."""

    @property
    def at_boundary(self) -> bool:
        """True when the bytes so far end exactly where a frame ends (or none came yet)."""
        return not self._head and self._remaining == 0

    def feed(self, data: bytes) -> None:
        position = 0
        while position < len(data):
            if self._remaining:
                take = min(self._remaining, len(data) - position)
                if self._opcode == OPCODE_CLOSE:
                    self._keep_close_payload(data[position : position + take])
                self._remaining -= take
                self._offset += take
                position += take
                if not self._remaining:
                    self._end_frame()
                continue
            take = min(header_size(self._head) - len(self._head), len(data) - position)
            self._head += data[position : position + take]
            position += take
            if len(self._head) == header_size(self._head):
                self._start_frame()

    def _start_frame(self) -> None:
        head = self._head
        self._opcode = head[0] & 0x0F
        length7 = head[1] & 0x7F
        if length7 == _LENGTH_16:
            length = int.from_bytes(head[2:4], "big")
        elif length7 == _LENGTH_64:
            length = int.from_bytes(head[2:10], "big")
        else:
            length = length7
        self._mask = bytes(head[-4:]) if head[1] & _MASK else b""
        self._head = bytearray()
        self._remaining = length
        self._offset = 0
        self._close_payload = bytearray()
        if not length:
            self._end_frame()

    def _keep_close_payload(self, chunk: bytes) -> None:
        wanted = 2 - len(self._close_payload)
        for index, byte in enumerate(chunk[:wanted]):
            key = self._mask[(self._offset + index) % 4] if self._mask else 0
            self._close_payload.append(byte ^ key)

    def _end_frame(self) -> None:
        if self._opcode == OPCODE_CLOSE:
            self.close_seen = True
            if len(self._close_payload) == 2:
                self.close_code = int.from_bytes(self._close_payload, "big")


def close_frame(code: int, *, masked: bool) -> bytes:
    """A Close frame with ``code`` and no reason.

    RFC 6455 §5.3: frames a client sends are masked with a fresh unpredictable key, frames a
    server sends are not; the proxy speaks as a client to the upstream and as a server to the
    client.
    """
    payload = code.to_bytes(2, "big")
    if not masked:
        return bytes([_FIN | OPCODE_CLOSE, len(payload)]) + payload
    key = secrets.token_bytes(4)
    masked_payload = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bytes([_FIN | OPCODE_CLOSE, _MASK | len(payload)]) + key + masked_payload
