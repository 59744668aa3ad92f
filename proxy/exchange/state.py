"""One request's journey through the proxy, and the canonical log line that records it.

Theory of operation
-------------------
An ``Exchange`` is created when a request (or a WebSocket handshake) arrives and is dropped whole
when the work for it ends. Two things about it change on the way, and each has one table:

**Phases** say where the exchange is, and so, once it has ended, where it was (for a hang-up,
where the client left: the same split as HAProxy's CR/CH/CD termination flags). Every exchange
starts in ``AWAITING_UPSTREAM_HEADERS`` and moves only through ``advance(event)``, which looks the
move up in ``PHASE_MOVES`` (h11's style, ``h11/_state.py``)::

    AWAITING_UPSTREAM_HEADERS --reading_body--------> REQUEST_BODY
    REQUEST_BODY              --body_read-----------> AWAITING_UPSTREAM_HEADERS
    AWAITING_UPSTREAM_HEADERS --response_started----> STREAMING_RESPONSE
    REQUEST_BODY              --response_started----> STREAMING_RESPONSE   (RFC 9112 §9.3)
    STREAMING_RESPONSE        --body_read-----------> STREAMING_RESPONSE

A body may be waited on twice (read ahead into the buffer, then streamed while the upstream is
connected); an upstream may answer before it has read the whole body, and the upload that then
finishes leaves the phase where it is. Any other move is a bug: ``IllegalPhaseMoveError`` names the
phase and the event.

**Endings** say how the exchange ended. Every way is one row of ``Ending``: the ``Outcome`` it
records, the status and reason of the canonical line (or ``None`` where the ending brings its
own: the upstream's status, a refusal's), the line's log level, and the short text of the
answer the proxy makes itself, if it makes one. The methods named after them (``completed``,
``refused``, ``client_left``, ``upstream_failed``, ``deadline_passed``, ``cut_by_drain`` and the
tunnel's four) are the only writers of ``outcome``, ``status`` and ``reason``. The first ending
wins: a hang-up's hook records it inside the client's callback, and the cancellation that lands a
turn later only cleans up. Each still returns what the client is told by that path, an
``Ending`` (``answer()`` builds the response) or, for a refusal, the response itself.

The canonical line is written once, by ``write_log_line``, when the work ends (for a write carried
to the end after a hang-up, that is when the upstream has answered, not when the client left).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from aiohttp import web

from proxy.edge.gate import Rejection
from proxy.logs import logline
from proxy.policy.routes import DEFAULT_RULE, Action, Decision
from proxy.upstream.connection import UpstreamConnectError, UpstreamError, UpstreamTimeoutError
from proxy.wire.response import proxy_answer

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
    """Where a request was when it ended; for a hang-up, where the client left."""

    REQUEST_BODY = "request_body"
    AWAITING_UPSTREAM_HEADERS = "awaiting_upstream_headers"
    STREAMING_RESPONSE = "streaming_response"


class PhaseEvent(enum.StrEnum):
    """What moves an exchange from one ``Phase`` to the next (``PHASE_MOVES``)."""

    READING_BODY = "reading_body"
    """The proxy waits on the client's body (to read it ahead, or to stream it upstream)."""
    BODY_READ = "body_read"
    """The body the proxy waited on is in hand (read ahead) or sent whole (streamed)."""
    RESPONSE_STARTED = "response_started"
    """The upstream's head is here and goes to the client (or the tunnel opens)."""


PHASE_MOVES: dict[Phase, dict[PhaseEvent, Phase]] = {
    Phase.AWAITING_UPSTREAM_HEADERS: {
        PhaseEvent.READING_BODY: Phase.REQUEST_BODY,
        PhaseEvent.RESPONSE_STARTED: Phase.STREAMING_RESPONSE,
    },
    Phase.REQUEST_BODY: {
        PhaseEvent.BODY_READ: Phase.AWAITING_UPSTREAM_HEADERS,
        # An upstream may answer before it has read the whole request (RFC 9112 §9.3).
        PhaseEvent.RESPONSE_STARTED: Phase.STREAMING_RESPONSE,
    },
    Phase.STREAMING_RESPONSE: {
        # The upload that finishes after an early answer leaves the phase where it is.
        PhaseEvent.BODY_READ: Phase.STREAMING_RESPONSE,
    },
}
"""Every legal phase move: phase → event → the next phase. Nothing else moves a phase."""


class IllegalPhaseMoveError(RuntimeError):
    """A phase move ``PHASE_MOVES`` does not allow: a bug in the caller, never the client's."""

    def __init__(self, phase: Phase, event: PhaseEvent) -> None:
        super().__init__(f"no phase move for event {event.value!r} in phase {phase.value!r}")
        self.phase = phase
        self.event = event


class Ending(enum.Enum):
    """Every way an exchange ends, in one table (the module's theory of operation).

    ``status`` and ``reason`` are what the canonical line records; ``None`` where the ending
    brings its own (the upstream's status, a refusal's, an upstream error's reason). ``text`` is
    the short text of the proxy's own answer; ``None`` where the proxy makes none (the answer is
    the upstream's, or nobody is left to answer).
    """

    outcome: Outcome
    status: int | None
    reason: str | None
    level: str
    text: str | None

    # fmt: off
    # name                 outcome                   status  reason               level      text
    COMPLETED            = (Outcome.COMPLETED,        None,  None,               "info",    None)
    REFUSED              = (Outcome.CLIENT_ERROR,     None,  None,               "info",    None)
    CLIENT_LEFT          = (Outcome.CLIENT_HANGUP,    STATUS_CLIENT_CLOSED, None, "info",
                            "client closed the connection")
    SEND_TIMED_OUT       = (Outcome.SEND_TIMEOUT,     408,   "send_timeout",     "info",    None)
    UPSTREAM_UNREACHABLE = (Outcome.UPSTREAM_ERROR,   502,   None,               "warning",
                            "the upstream could not be reached")
    UPSTREAM_BROKE       = (Outcome.UPSTREAM_ERROR,   502,   None,               "warning",
                            "the upstream connection failed")
    UPSTREAM_SILENT      = (Outcome.UPSTREAM_TIMEOUT, 504,   None,               "warning",
                            "the upstream did not answer in time")
    DEADLINE_PASSED      = (Outcome.UPSTREAM_TIMEOUT, 504,   "client_deadline",  "warning",
                            "the request's deadline passed before the upstream answered")
    CUT_BY_DRAIN         = (Outcome.DRAIN_TIMEOUT,    503,   "drain_timeout",    "warning", None)
    # A WebSocket tunnel's: its status is the 101 that opened it.
    TUNNEL_CLOSED        = (Outcome.COMPLETED,        101,   None,               "info",    None)
    TUNNEL_GOING_AWAY    = (Outcome.COMPLETED,        101,   "proxy_going_away", "info",    None)
    TUNNEL_CLIENT_VANISHED = (Outcome.CLIENT_HANGUP,  STATUS_CLIENT_CLOSED, "client_vanished",
                              "info", None)
    TUNNEL_UPSTREAM_VANISHED = (Outcome.UPSTREAM_ERROR, 101, "upstream_vanished", "warning", None)
    # fmt: on

    def __init__(
        self,
        outcome: Outcome,
        status: int | None,
        reason: str | None,
        level: str,
        text: str | None,
    ) -> None:
        self.outcome = outcome
        self.status = status
        self.reason = reason
        self.level = level
        self.text = text

    def answer(self, *, close: bool = False) -> web.Response:
        """The proxy's own answer for this ending (``close`` ends the client connection after)."""
        if self.status is None or self.text is None:
            raise TypeError(f"the ending {self.name} has no answer of the proxy's own")
        return proxy_answer(self.status, self.text, close=close)


# Looked up once: an enum member's attribute access costs more than a global's (hot path).
_COMPLETED = Ending.COMPLETED
_REFUSED = Ending.REFUSED
_CLIENT_LEFT = Ending.CLIENT_LEFT
_SEND_TIMED_OUT = Ending.SEND_TIMED_OUT


@dataclass(slots=True)
class Exchange:
    request_id: str
    method: str
    path: str
    client: str | None
    cancellable: bool
    started: float = field(default_factory=time.perf_counter)
    decision: Decision = _DEFAULT_DECISION
    """The policy rule that decides what a hang-up does to this request."""

    # --- written by advance ------------------------------------------------------------------
    phase: Phase = Phase.AWAITING_UPSTREAM_HEADERS

    # --- written by the endings --------------------------------------------------------------
    outcome: Outcome | None = None
    status: int | None = None
    reason: str | None = None
    level: str = "info"
    """The canonical line's level (the ending's); info while no ending is recorded."""
    client_left_at: float | None = None
    """``perf_counter`` when the proxy learned that the client left (the first ``client_left``)."""
    upstream_closed: bool = False
    """True when the proxy closed the upstream connection because the client hung up."""
    upstream_closed_at: float | None = None
    """``perf_counter`` when the proxy closed the upstream connection because of that."""

    # --- facts heard on the way ----------------------------------------------------------------
    upstream_status: int | None = None

    @property
    def client_gone(self) -> bool:
        """True once the client's connection is gone (the first ``client_left`` set the time)."""
        return self.client_left_at is not None

    def advance(self, event: PhaseEvent) -> None:
        """Move to the phase ``event`` leads to (``PHASE_MOVES``); raise on an illegal move."""
        phase = PHASE_MOVES[self.phase].get(event)
        if phase is None:
            raise IllegalPhaseMoveError(self.phase, event)
        self.phase = phase

    def upstream_answered(self, status: int) -> None:
        """The upstream's head is here, with ``status``."""
        self.upstream_status = status

    # --- the endings (the table is ``Ending``) -------------------------------------------------

    def _end(self, ending: Ending, status: int | None = None, reason: str | None = None) -> None:
        """Record ``ending``, with the status or reason it brings; the first ending wins."""
        if self.outcome is None:
            self.outcome = ending.outcome
            self.status = ending.status if status is None else status
            self.reason = ending.reason if reason is None else reason
            self.level = ending.level

    def completed(self, status: int) -> None:
        """The upstream's answer reached the client whole, with ``status``."""
        self._end(_COMPLETED, status)

    def refused(self, rejection: Rejection) -> web.Response:
        """The proxy would not forward the request: its answer, after which the connection
        closes (an unread body must never be parsed as a next request)."""
        self._end(_REFUSED, rejection.status, rejection.reason)
        return proxy_answer(rejection.status, rejection.text, close=True)

    def client_left(self, *, send_timed_out: bool = False, closed_upstream: bool = False) -> Ending:
        """The client's connection is gone: it hung up, or the proxy cut it for accepting nothing
        for ``--send-timeout`` (then the status is what the client was being sent, as nginx logs
        it, or 408 if nothing had been). ``closed_upstream``: the upstream connection is closed
        because of it, as by ``closed_upstream()``. Returns ``CLIENT_LEFT``: a 499, should
        anything still be answered."""
        if send_timed_out:
            self._left(_SEND_TIMED_OUT, self.upstream_status, closed_upstream=closed_upstream)
        else:
            self._left(_CLIENT_LEFT, closed_upstream=closed_upstream)
        return _CLIENT_LEFT

    def closed_upstream(self) -> None:
        """The upstream connection was closed because the client left (after ``client_left``)."""
        self.upstream_closed = True
        if self.upstream_closed_at is None:
            self.upstream_closed_at = time.perf_counter()

    def upstream_failed(self, exc: UpstreamError) -> Ending:
        """An upstream failure: silence past the read timeout is a 504, anything else (refused,
        reset, unparsable) a 502. The one mapping for requests and WebSocket handshakes alike."""
        if isinstance(exc, UpstreamTimeoutError):
            ending, reason = Ending.UPSTREAM_SILENT, exc.reason
        elif isinstance(exc, UpstreamConnectError):
            ending, reason = Ending.UPSTREAM_UNREACHABLE, exc.reason
        else:
            ending, reason = Ending.UPSTREAM_BROKE, f"upstream_failed: {exc.reason}"
        self._end(ending, reason=reason)
        return ending

    def deadline_passed(self) -> Ending:
        """The client's own deadline (``--deadline-header``) passed before the answer was whole."""
        self._end(Ending.DEADLINE_PASSED)
        return Ending.DEADLINE_PASSED

    def cut_by_drain(self) -> None:
        """Still running when ``--drain-timeout`` ran out: the proxy cut it."""
        self._end(Ending.CUT_BY_DRAIN)

    def tunnel_closed(self, close: str) -> None:
        """A WebSocket session ended after a Close frame; ``close`` says whose and its code."""
        self._end(Ending.TUNNEL_CLOSED, reason=close)

    def tunnel_going_away(self) -> None:
        """The proxy's drain ended a WebSocket session (1001 to both sides)."""
        self._end(Ending.TUNNEL_GOING_AWAY)

    def tunnel_client_vanished(self) -> None:
        """A WebSocket client left without a Close frame; its upstream connection is closed."""
        self._left(Ending.TUNNEL_CLIENT_VANISHED, closed_upstream=True)

    def tunnel_upstream_vanished(self) -> None:
        """A WebSocket upstream left without a Close frame."""
        self._end(Ending.TUNNEL_UPSTREAM_VANISHED)

    def _left(self, ending: Ending, status: int | None = None, *, closed_upstream: bool) -> None:
        if self.client_left_at is None:
            self.client_left_at = time.perf_counter()
        self._end(ending, status)
        if closed_upstream:
            self.closed_upstream()

    # --- the record ----------------------------------------------------------------------------

    def cancel_propagation(self) -> float | None:
        """Seconds from the client leaving to the upstream connection closing, if both happened."""
        if self.client_left_at is None or self.upstream_closed_at is None:
            return None
        return self.upstream_closed_at - self.client_left_at

    def write_log_line(self) -> None:
        """The canonical line: one per request, at its ending's level, never with a traceback."""
        duration_ms = round((time.perf_counter() - self.started) * 1000, 3)
        # logline.REQUEST_FIELDS, in its order: the shape its fast path renders.
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
        logline.write_event(self.level, "request", fields, logline.render_request_fields)
