"""``Hangup-Decision``: what the proxy writes and what the backend makes of it.

The wire half asserts on the bytes the upstream received, read by h11, llhttp and aiohttp's
parser: a client's own copy of the field never gets there, and the proxy's is there once.
"""

from __future__ import annotations

import pytest

from demo_backend.cancel_methods import DEFAULT_CANCEL_METHODS, trust_decision_header_from_env
from demo_backend.canceller import ConnectionCanceller
from proxy.policy.decision_header import (
    DECISION_HEADER,
    HEADER_LINES,
    TRUST_VAR,
    decided_cancellable,
    header_value,
)
from proxy.policy.routes import Action, parse_rules
from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream
from tests.support import exchange, request_bytes
from tests.wire_parsers import read_by_every_parser


@pytest.mark.parametrize(
    ("action", "value"),
    [(Action.CANCEL, "cancel"), (Action.GRACE, "cancel"), (Action.NEVER, "never")],
)
def test_the_proxy_says_cancel_for_cancel_and_grace_and_never_for_never(
    action: Action, value: str
) -> None:
    assert header_value(action) == value
    assert HEADER_LINES[action] == f"Hangup-Decision: {value}"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"hangup-decision", b"cancel")], True),
        ([(b"hangup-decision", b"never")], False),
        ([(b"hangup-decision", b" Cancel ")], True),
        ([(b"host", b"a"), (b"hangup-decision", b"never"), (b"accept", b"*/*")], False),
        ([], None),
        ([(b"host", b"a")], None),
        ([(b"hangup-decision", b"")], None),
        ([(b"hangup-decision", b"grace")], None),
        ([(b"hangup-decision", b"cancel, never")], None),
        ([(b"hangup-decision", b"cancel"), (b"hangup-decision", b"cancel")], None),
        ([(b"hangup-decision", b"cancel"), (b"hangup-decision", b"never")], None),
        ([(b"x-hangup-decision", b"cancel")], None),
    ],
)
def test_the_backend_reads_one_known_decision_and_nothing_else(
    headers: list[tuple[bytes, bytes]], expected: bool | None
) -> None:
    assert decided_cancellable(headers) is expected


def http_scope(method: str, *headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "method": method, "path": "/", "headers": list(headers)}


CANCEL = (b"hangup-decision", b"cancel")
NEVER = (b"hangup-decision", b"never")


@pytest.mark.parametrize(
    ("trust", "method", "headers", "cancellable"),
    [
        (True, "POST", [CANCEL], True),
        (True, "GET", [NEVER], False),
        (True, "POST", [], False),  # reached directly: the method list
        (True, "GET", [], True),
        (True, "POST", [(b"hangup-decision", b"maybe")], False),
        (False, "POST", [CANCEL], False),  # not trusted: the header is nobody's word
        (False, "GET", [NEVER], True),
    ],
)
def test_a_trusting_canceller_follows_the_header_and_falls_back_to_its_method_list(
    trust: bool, method: str, headers: list[tuple[bytes, bytes]], cancellable: bool
) -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("not called")

    canceller = ConnectionCanceller(app, DEFAULT_CANCEL_METHODS, trust_decision_header=trust)

    assert canceller.is_cancellable(http_scope(method, *headers)) is cancellable


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({TRUST_VAR: "1"}, True),
        ({TRUST_VAR: "off"}, False),
        ({TRUST_VAR: "Yes"}, True),
    ],
)
def test_trust_is_off_unless_the_environment_turns_it_on(
    environ: dict[str, str], expected: bool
) -> None:
    assert trust_decision_header_from_env(environ) is expected


def test_a_bad_trust_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match=f"^{TRUST_VAR}: expected one of"):
        trust_decision_header_from_env({TRUST_VAR: "sometimes"})


# --- on the wire ---------------------------------------------------------------------------------


async def test_the_upstream_receives_the_proxys_decision_once_and_never_the_clients(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    rules = parse_rules("POST /chat=cancel;GET /report=never;/upload=grace=5")
    forged = [(DECISION_HEADER, "never"), ("hangup-decision", "never")]
    sent = [
        request_bytes("GET", "/anything", forged),  # default rule: GET is cancelled
        request_bytes("POST", "/chat", [(DECISION_HEADER, "never")], b"{}"),
        request_bytes("GET", "/report", [(DECISION_HEADER, "cancel")]),
        request_bytes("PUT", "/upload", body=b"x"),
        request_bytes("POST", "/elsewhere", [(DECISION_HEADER, "cancel")], b"{}"),
        # A Connection header cannot smuggle the client's copy past the proxy either.
        request_bytes(
            "DELETE", "/x", [("Connection", "Hangup-Decision"), (DECISION_HEADER, "cancel")]
        ),
    ]
    async with start_proxy(upstream.url, route_rules=rules) as proxy:
        for data in sent:
            response = await exchange(proxy.address.port, data)
            assert response.status == 200

    messages = [
        message
        for connection in upstream.connections
        for message in read_by_every_parser(bytes(connection.received))
    ]
    decisions = [
        (message.method, message.target, message.header_values("hangup-decision"))
        for message in messages
    ]
    assert decisions == [
        ("GET", "/anything", ["cancel"]),
        ("POST", "/chat", ["cancel"]),
        ("GET", "/report", ["never"]),
        ("PUT", "/upload", ["cancel"]),
        ("POST", "/elsewhere", ["never"]),
        ("DELETE", "/x", ["never"]),
    ]
