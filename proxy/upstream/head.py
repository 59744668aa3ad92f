"""The head of the upstream's answer, and the body framing that llhttp read from it."""

from __future__ import annotations

from typing import Final

MAX_HEAD_SIZE: Final = 64 * 1024
"""Largest response head accepted from the upstream: llhttp has no limit of its own, and httptools
collects a field across reads, so a broken upstream could otherwise grow one without bound."""


FRAMING_NAME_LENGTHS: Final = (len(b"content-length"), len(b"transfer-encoding"))
"""The lengths of the two framing field names: a field of any other length cannot frame a body,
so the reader picks out candidates as fields arrive, with no lower-casing (issue 16)."""


class ResponseHead:
    """The status line and header fields of the upstream's (final) answer, and its framing."""

    __slots__ = ("chunked", "content_length", "raw_headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        raw_headers: list[tuple[bytes, bytes]],
        framing_candidates: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """``framing_candidates``: the fields among ``raw_headers`` that may frame the body, when
        the caller picked them out already (``FRAMING_NAME_LENGTHS``); else all are looked at."""
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers
        # How llhttp framed the body (RFC 9112 §6.3), which is what the client is told: it refused
        # a repeated or non-numeric Content-Length, and Transfer-Encoding overrides one (rule 3).
        length: int | None = None
        last_coding: bytes | None = None
        for name, value in raw_headers if framing_candidates is None else framing_candidates:
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                last_coding = value.rpartition(b",")[2].strip().lower()
            elif lowered == b"content-length":
                length = int(value)
        self.chunked = last_coding == b"chunked"
        self.content_length = length if last_coding is None else None

    @property
    def is_ended_by_close(self) -> bool:
        """RFC 9112 §6.3 rule 8: a body with no Content-Length whose last coding is not chunked
        ends when the upstream closes the connection."""
        if self.status in (204, 304):
            return False
        return self.content_length is None and not self.chunked
