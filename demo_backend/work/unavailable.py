"""The one way a work recipe says it cannot run: a 503 with a one-line reason."""

from __future__ import annotations


class WorkUnavailable(Exception):  # noqa: N818 - names the state, as an HTTP 503 does
    """What the work needs (a database, a downstream) is not configured or not reachable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
