"""One request's journey through the proxy, and the canonical log line that records it.

An ``Exchange`` is created when a request arrives and written exactly once, as one JSON line,
when the work for it ends (for a write carried to the end after a hang-up, that is when the
upstream has answered, not when the client left).
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.logs import logline
from proxy.policy.routes import DEFAULT_RULE, Action, Decision
from proxy.upstream.connection import UpstreamConnectError, UpstreamError, UpstreamTimeoutError

_DEFAULT_DECISION = Decision(Action.CANCEL, 0.0, DEFAULT_RULE)


# nginx's convention for "client closed the connection before the response was complete".
STATUS_CLIENT_CLOSED = 499


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    """The upstream's answer reached the client whole (whatever its status)."""
    CLIENT_HANGUP = "client_hangup"
    """The client left first. For a cancellable method the upstream connection was closed."""
    UPSTREAM_ERROR = "upstream_error"
    """Refused, reset, or an answer we could not parse: 502 (or a cut connection once streaming)."""
    UPSTREAM_TIMEOUT = "upstream_timeout"
    """The upstream was silent past ``--upstream-timeout``: 504 (or a cut connection)."""
    CLIENT_ERROR = "client_error"
    """The client sent something we would not forward (a broken body, an unknown Expect)."""
    DRAIN_TIMEOUT = "drain_timeout"
    """Still running when ``--drain-timeout`` ran out at shutdown: the proxy cut it."""
    SEND_TIMEOUT = "send_timeout"
    """The client accepted no byte of its answer for ``--send-timeout``: the proxy cut it, and
    closed the upstream connection (for every method: the request had reached the upstream)."""


class Phase(enum.StrEnum):
    """Where a request was when it ended; for a hang-up, where the client left.

    The same split as HAProxy's CR/CH/CD termination flags.
    """

    REQUEST_BODY = "request_body"
    AWAITING_UPSTREAM_HEADERS = "awaiting_upstream_headers"
    STREAMING_RESPONSE = "streaming_response"


# Outcomes an operator should look at; a hang-up is an expected outcome and stays at info.
_WARNING_OUTCOMES = (Outcome.UPSTREAM_ERROR, Outcome.UPSTREAM_TIMEOUT, Outcome.DRAIN_TIMEOUT)


@dataclass(slots=True)
class Exchange:
    request_id: str
    method: str
    path: str
    client: str | None
    cancellable: bool
    started: float = field(default_factory=time.perf_counter)
    phase: Phase = Phase.AWAITING_UPSTREAM_HEADERS
    outcome: Outcome | None = None
    status: int | None = None
    upstream_status: int | None = None
    upstream_closed: bool = False
    """True when the proxy closed the upstream connection because the client hung up."""
    reason: str | None = None
    client_gone: bool = False
    decision: Decision = _DEFAULT_DECISION
    """The policy rule that decides what a hang-up does to this request."""
    client_left_at: float | None = None
    """``perf_counter`` when the proxy learned that the client left (the first ``hung_up``)."""
    upstream_closed_at: float | None = None
    """``perf_counter`` when the proxy closed the upstream connection because of that."""

    def finish(self, outcome: Outcome, status: int, reason: str | None = None) -> None:
        """Record how the exchange ended; the first call wins (later paths only clean up)."""
        if self.outcome is None:
            self.outcome = outcome
            self.status = status
            self.reason = reason

    def upstream_failed(self, exc: UpstreamError) -> tuple[int, str]:
        """Record an upstream failure as the outcome; the status and short text to answer with.

        The one mapping for requests and WebSocket handshakes alike: silence past the read
        timeout is a 504, anything else (refused, reset, unparsable) a 502.
        """
        if isinstance(exc, UpstreamTimeoutError):
            self.finish(Outcome.UPSTREAM_TIMEOUT, 504, exc.reason)
            return 504, "the upstream did not answer in time"
        if isinstance(exc, UpstreamConnectError):
            self.finish(Outcome.UPSTREAM_ERROR, 502, exc.reason)
            return 502, "the upstream could not be reached"
        self.finish(Outcome.UPSTREAM_ERROR, 502, f"upstream_failed: {exc.reason}")
        return 502, "the upstream connection failed"

    def client_connection_gone(self, *, send_timed_out: bool) -> None:
        """The client's connection is gone: it hung up, or the proxy cut it for accepting
        nothing for ``--send-timeout`` (then the status is what the client was being sent, as
        nginx logs it, or 408 if nothing had been)."""
        if send_timed_out:
            status = self.upstream_status if self.upstream_status is not None else 408
            self.finish(Outcome.SEND_TIMEOUT, status, "send_timeout")
        self.hung_up()

    def hung_up(self) -> None:
        self.client_gone = True
        if self.client_left_at is None:
            self.client_left_at = time.perf_counter()
        self.finish(Outcome.CLIENT_HANGUP, STATUS_CLIENT_CLOSED)

    def closed_upstream(self) -> None:
        """The upstream connection was closed because the client left (after ``hung_up``)."""
        self.upstream_closed = True
        if self.upstream_closed_at is None:
            self.upstream_closed_at = time.perf_counter()

    def cancel_propagation(self) -> float | None:
        """Seconds from the client leaving to the upstream connection closing, if both happened."""
        if self.client_left_at is None or self.upstream_closed_at is None:
            return None
        return self.upstream_closed_at - self.client_left_at

    def write_log_line(self) -> None:
        """The canonical line: one per request, at info level, never with a traceback."""
        duration_ms = round((time.perf_counter() - self.started) * 1000, 3)
        fields = {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "outcome": str(self.outcome),
            "duration_ms": duration_ms,
            "upstream_status": self.upstream_status,
            "client": self.client,
        }
        if self.outcome is Outcome.CLIENT_HANGUP:
            fields["phase"] = str(self.phase)
            fields["cancelled"] = self.cancellable
            fields["upstream_closed"] = self.upstream_closed
            # Which rule decided what the hang-up did (proxy.policy.routes): visible per request.
            fields["policy_rule"] = self.decision.rule
            fields["policy_action"] = str(self.decision.action)
            if self.decision.action is Action.GRACE:
                fields["grace_seconds"] = self.decision.grace
        if self.reason is not None:
            fields["reason"] = self.reason
        level = "warning" if self.outcome in _WARNING_OUTCOMES else "info"
        logline.write_event(level, "request", fields, _render_usual_fields)


# The fields write_log_line gives every request; the ones it adds only for some come after them.
_USUAL_FIELD_COUNT = 8


def _render_usual_fields(fields: dict[str, Any]) -> str | None:
    """The fields of a request that ended without extras (no hang-up, no reason) as JSON members.

    That is nearly every request, and this one f-string costs a third of the JSON encoder's time
    (``proxy.logs.logline``); any other shape, or a value of another type, is left to the encoder.
    """
    if len(fields) != _USUAL_FIELD_COUNT:
        return None
    request_id, method, path = fields["request_id"], fields["method"], fields["path"]
    status, outcome, duration_ms = fields["status"], fields["outcome"], fields["duration_ms"]
    upstream_status, client = fields["upstream_status"], fields["client"]
    if not (
        request_id.__class__ is method.__class__ is path.__class__ is outcome.__class__ is str
        and duration_ms.__class__ is float
        and math.isfinite(duration_ms)
        and (status is None or status.__class__ is int)
        and (upstream_status is None or upstream_status.__class__ is int)
        and (client is None or client.__class__ is str)
    ):
        return None
    string = logline.encode_json_string
    return (
        f'"request_id": {string(request_id)}, "method": {string(method)}, '
        f'"path": {string(path)}, "status": {_json_int(status)}, '
        f'"outcome": {string(outcome)}, "duration_ms": {duration_ms!r}, '
        f'"upstream_status": {_json_int(upstream_status)}, '
        f'"client": {"null" if client is None else string(client)}'
    )


def _json_int(value: int | None) -> str:
    return "null" if value is None else int.__repr__(value)
