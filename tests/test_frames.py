"""proxy.websocket.frames: frame boundaries and Close frames in a byte stream split anywhere."""

from __future__ import annotations

import pytest

from proxy.websocket.frames import FrameTracker, close_frame, header_size

MASK = b"\x01\x02\x03\x04"


def frame(opcode: int, payload: bytes, *, masked: bool = False, fin: bool = True) -> bytes:
    """RFC 6455 §5.2, written independently of proxy.websocket.frames."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        head = bytes([first, mask_bit | len(payload)])
    elif len(payload) < 65536:
        head = bytes([first, mask_bit | 126]) + len(payload).to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + len(payload).to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + MASK + bytes(byte ^ MASK[index % 4] for index, byte in enumerate(payload))


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


STREAMS = [
    pytest.param(frame(0x1, b"hello"), False, None, id="text"),
    pytest.param(frame(0x2, b"x" * 300), False, None, id="binary-16-bit-length"),
    pytest.param(frame(0x2, b"x" * 70000, masked=True), False, None, id="binary-64-bit-length"),
    pytest.param(frame(0x9, b"") + frame(0xA, b"p"), False, None, id="ping-pong"),
    pytest.param(frame(0x8, (1000).to_bytes(2, "big")), True, 1000, id="close-1000"),
    pytest.param(
        frame(0x8, (4001).to_bytes(2, "big") + b"bye", masked=True), True, 4001, id="masked-close"
    ),
    pytest.param(frame(0x8, b""), True, None, id="close-without-code"),
    pytest.param(
        frame(0x1, b"frag", fin=False) + frame(0x9, b"") + frame(0x0, b"ment"),
        False,
        None,
        id="control-frame-inside-a-fragmented-message",
    ),
]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1 << 20])
@pytest.mark.parametrize(("stream", "closed", "code"), STREAMS)
def test_tracker_finds_boundaries_and_close_codes_however_the_stream_is_split(
    stream: bytes, closed: bool, code: int | None, piece: int
) -> None:
    tracker = FrameTracker()
    for chunk in split_every(stream, piece):
        tracker.feed(chunk)
    assert tracker.at_boundary
    assert (tracker.close_seen, tracker.close_code) == (closed, code)


@pytest.mark.parametrize("cut", [1, 2, 5, 10])
def test_tracker_is_not_at_a_boundary_inside_a_frame(cut: int) -> None:
    tracker = FrameTracker()
    tracker.feed(frame(0x1, b"a payload", masked=True)[:cut])
    assert not tracker.at_boundary


@pytest.mark.parametrize("masked", [False, True])
def test_close_frames_are_read_back_with_their_code(masked: bool) -> None:
    data = close_frame(1001, masked=masked)
    tracker = FrameTracker()
    tracker.feed(data)
    assert (tracker.close_seen, tracker.close_code, tracker.at_boundary) == (True, 1001, True)
    assert bool(data[1] & 0x80) is masked  # RFC 6455 §5.3: only client frames are masked
    assert len(data) == header_size(data) + 2


def test_a_masked_close_frame_uses_a_fresh_key_each_time() -> None:
    # RFC 6455 §5.3: the key must be unpredictable; eight equal keys would mean a fixed one.
    assert len({close_frame(1001, masked=True) for _ in range(8)}) > 1
