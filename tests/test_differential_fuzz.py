"""The differential fuzzer, bounded for CI: generated messages through the real proxy.

Each case is sent raw through the real proxy to a recording upstream, and the upstream's bytes are
read by h11, llhttp and aiohttp (``tests.fuzz_target`` states the oracle). The seeds run first:
the gate corpus, the request issue 12 found, and one case per class of the public smuggling
research. ``HANGUP_FUZZ_EXAMPLES`` sets how many generated cases run (default 2000, about ten
seconds on a 2-core machine); ``python -m benchmarks.fuzz --minutes N`` runs for as long as asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz_grammar import Case, cases
from tests.fuzz_seeds import SEEDS
from tests.fuzz_target import FuzzTarget, check

EXAMPLES = int(os.environ.get("HANGUP_FUZZ_EXAMPLES", "2000"))


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    with FuzzTarget.running() as running:
        yield running


@pytest.mark.parametrize("case", [pytest.param(case, id=name) for name, case in SEEDS])
def test_every_seed_reaches_the_upstream_as_every_parser_and_hangup_agree(
    target: FuzzTarget, case: Case
) -> None:
    check(target.run(case))


def test_generated_messages_reach_the_upstream_as_every_parser_and_hangup_agree(
    target: FuzzTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=cases())
    def one_case(case: Case) -> None:
        outcome = check(target.run(case))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    one_case()
    ran = sum(outcomes.values())
    with capsys.disabled():
        print(f"\ndifferential fuzz: {ran} generated cases, {dict(sorted(outcomes.items()))}")
    assert ran >= EXAMPLES // 2  # Hypothesis may stop early only when it runs out of new inputs
    assert outcomes.get("well-formed: forwarded", 0) > 0
