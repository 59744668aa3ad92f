"""How an exchange with the upstream fails: one exception per status the forwarder answers."""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream could not be reached, or failed the exchange; ``reason`` is for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamConnectError(UpstreamError):
    """No connection: refused, unreachable, or not within ``--connect-timeout`` (502)."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream was silent for ``--upstream-timeout`` (504)."""


class UpstreamBrokenError(UpstreamError):
    """The upstream closed early or answered something that is not HTTP/1.1 (502)."""
