"""The proxy's hang-up decision, handed to the backend in one request header: both halves' contract.

Theory of operation
-------------------
The proxy decides per request what a hang-up does (``proxy.policy.routes``: route rules, then the
method list, with grace), and carries it out on its side: it closes the upstream connection, or it
keeps it until the answer is in. The cancelling protocol behind it turns a closed connection into a
cancelled handler, but by its *own* method list. The two disagreed: a ``POST /v1/chat=cancel``
rule closed the connection and the backend, which never cancels a POST by default, burned the
tokens to the end anyway.

So the proxy says what it decided. Every request it forwards carries ``Hangup-Decision: cancel``
(the proxy closes the connection when the client leaves, at once or after the grace period) or
``Hangup-Decision: never`` (it keeps the connection to the end; a close the backend sees then
comes from elsewhere: an upstream timeout, a drain cut off, a crash, and must not cancel a
write). A client's own ``Hangup-Decision`` never reaches the backend: the proxy owns the field, as
it owns ``X-Forwarded-*`` (``proxy.wire.headers``), and drops the client's before adding its own.

The backend honours the header only when told to trust it (``HANGUP_TRUST_DECISION_HEADER=1``,
``--trust-decision-header``), which is right only when every client reaches it through hangup:
anyone who can reach the backend directly could otherwise choose what a hang-up does to their own
requests. A request without the header (a health probe, a direct call), or with a value other
than the two, falls back to the backend's own method list, so a backend reached directly stays as
safe as before. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.policy.routes import Action

DECISION_HEADER = "Hangup-Decision"
TRUST_VAR = "HANGUP_TRUST_DECISION_HEADER"

CANCEL = "cancel"
NEVER = "never"

_HEADER_NAME = DECISION_HEADER.lower().encode("latin-1")
# Grace is a cancel as the backend sees it: a close that comes after the grace period is the
# proxy's cancel; an answer within it keeps the connection open.
_VALUES = {Action.CANCEL: CANCEL, Action.GRACE: CANCEL, Action.NEVER: NEVER}
_CANCELLABLE = {CANCEL.encode(): True, NEVER.encode(): False}


def header_value(action: Action) -> str:
    """What the proxy tells the backend for a request whose hang-up ``action`` it decided."""
    return _VALUES[action]


# The whole line per action, built once: the forwarder adds one per request.
HEADER_LINES = {action: f"{DECISION_HEADER}: {header_value(action)}" for action in Action}


def decided_cancellable(headers: Iterable[tuple[bytes, bytes]]) -> bool | None:
    """From ASGI scope headers (lower-case names): the proxy's decision, or None without one.

    One field, one of the two values; anything else (repeated, unknown, empty) is no decision,
    and the backend's own method list applies.
    """
    found: bool | None = None
    for name, value in headers:
        if name == _HEADER_NAME:
            if found is not None:
                return None
            decision = _CANCELLABLE.get(value.strip().lower())
            if decision is None:
                return None
            found = decision
    return found
