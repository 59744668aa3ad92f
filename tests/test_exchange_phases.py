"""The exchange's two tables: every phase move, legal or not, and every ending's record."""

from __future__ import annotations

import itertools

import pytest

from proxy.edge.gate import UPSTREAM_BUSY
from proxy.exchange.state import (
    PHASE_MOVES,
    STATUS_CLIENT_CLOSED,
    Ending,
    Exchange,
    IllegalPhaseMoveError,
    Outcome,
    Phase,
    PhaseEvent,
)
from proxy.upstream.connection import (
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
)

A, B, S = Phase.AWAITING_UPSTREAM_HEADERS, Phase.REQUEST_BODY, Phase.STREAMING_RESPONSE
LEGAL = {
    (A, PhaseEvent.READING_BODY): B,
    (A, PhaseEvent.RESPONSE_STARTED): S,
    (B, PhaseEvent.BODY_READ): A,
    (B, PhaseEvent.RESPONSE_STARTED): S,
    (S, PhaseEvent.BODY_READ): S,
}
"""The theory of operation's diagram (``proxy.exchange.state``), written out independently."""


def exchange_in(phase: Phase) -> Exchange:
    exchange = Exchange("rid", "GET", "/", None, cancellable=True)
    exchange.phase = phase  # set directly: the test puts it where advance would have
    return exchange


@pytest.mark.parametrize(
    ("phase", "event"),
    [
        pytest.param(phase, event, id=f"{phase}-{event}")
        for phase, event in itertools.product(Phase, PhaseEvent)
    ],
)
def test_a_phase_moves_exactly_as_the_table_says_or_raises(phase: Phase, event: PhaseEvent) -> None:
    exchange = exchange_in(phase)
    expected = LEGAL.get((phase, event))

    if expected is None:
        with pytest.raises(IllegalPhaseMoveError) as raised:
            exchange.advance(event)
        assert (raised.value.phase, raised.value.event) == (phase, event)
        assert phase.value in str(raised.value)
        assert event.value in str(raised.value)
        assert exchange.phase is phase
    else:
        exchange.advance(event)
        assert exchange.phase is expected


def test_the_table_holds_exactly_the_legal_moves() -> None:
    table = {
        (phase, event): target
        for phase, moves in PHASE_MOVES.items()
        for event, target in moves.items()
    }
    assert table == LEGAL
    assert set(PHASE_MOVES) == set(Phase)


def test_every_exchange_starts_awaiting_the_upstreams_headers() -> None:
    assert Exchange("rid", "GET", "/", None, cancellable=True).phase is A


@pytest.mark.parametrize(
    ("exc", "ending", "reason"),
    [
        pytest.param(
            UpstreamTimeoutError("upstream_timeout"),
            Ending.UPSTREAM_SILENT,
            "upstream_timeout",
            id="silent-504",
        ),
        pytest.param(
            UpstreamConnectError("upstream_connect_failed"),
            Ending.UPSTREAM_UNREACHABLE,
            "upstream_connect_failed",
            id="unreachable-502",
        ),
        pytest.param(
            UpstreamBrokenError("reset"),
            Ending.UPSTREAM_BROKE,
            "upstream_failed: reset",
            id="broken-502",
        ),
    ],
)
def test_an_upstream_failure_picks_its_ending_from_the_exception(
    exc: UpstreamError, ending: Ending, reason: str
) -> None:
    exchange = Exchange("rid", "GET", "/", None, cancellable=True)

    assert exchange.upstream_failed(exc) is ending
    assert (exchange.outcome, exchange.status, exchange.reason, exchange.level) == (
        ending.outcome,
        ending.status,
        reason,
        "warning",
    )
    assert ending.answer().status == ending.status


def test_the_first_ending_wins_but_each_path_still_gets_its_answer() -> None:
    exchange = Exchange("rid", "GET", "/", None, cancellable=True)
    exchange.upstream_answered(200)
    exchange.client_left(send_timed_out=True, closed_upstream=True)

    left = exchange.client_left()
    exchange.cut_by_drain()

    assert (exchange.outcome, exchange.status, exchange.reason) == (
        Outcome.SEND_TIMEOUT,
        200,
        "send_timeout",
    )
    assert exchange.upstream_closed
    assert exchange.cancel_propagation() is not None
    assert left.answer().status == STATUS_CLIENT_CLOSED


def test_a_send_timeout_before_any_answer_is_logged_as_408() -> None:
    exchange = Exchange("rid", "GET", "/", None, cancellable=True)
    exchange.client_left(send_timed_out=True)
    assert (exchange.outcome, exchange.status) == (Outcome.SEND_TIMEOUT, 408)


def test_a_refusal_records_and_answers_the_rejection() -> None:
    exchange = Exchange("rid", "GET", "/", None, cancellable=True)
    response = exchange.refused(UPSTREAM_BUSY)

    assert (response.status, response.text) == (503, "503 too many upstream requests at once\n")
    assert (exchange.outcome, exchange.status, exchange.reason) == (
        Outcome.CLIENT_ERROR,
        503,
        "upstream_connection_limit",
    )


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_has_endings_and_one_log_level(outcome: Outcome) -> None:
    levels = {ending.level for ending in Ending if ending.outcome is outcome}
    warning = outcome in {Outcome.UPSTREAM_ERROR, Outcome.UPSTREAM_TIMEOUT, Outcome.DRAIN_TIMEOUT}
    assert levels == {"warning" if warning else "info"}


@pytest.mark.parametrize("ending", [e for e in Ending if e.text is None], ids=lambda e: e.name)
def test_an_ending_without_a_text_has_no_answer_of_the_proxys_own(ending: Ending) -> None:
    with pytest.raises(TypeError, match=ending.name):
        ending.answer()
