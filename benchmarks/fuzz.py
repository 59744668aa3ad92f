"""The differential fuzzer, run long: ``python -m benchmarks.fuzz --minutes N``.

The same grammar, rig and oracle as ``tests/test_differential_fuzz.py`` (``tests.fuzz_grammar``,
``tests.fuzz_target``), for as long as asked instead of a bounded number of examples. Hypothesis
is run in rounds of ``--round`` fresh random examples (no example database, no replay) until the
time is up; a failing round is shrunk by Hypothesis and its smallest counterexample printed as
bytes, and the run goes on. At the end it prints examples/s and the distribution of outcomes.
Exits 1 when any counterexample was found.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings

from proxy.logs.configure import configure_logging
from tests.fuzz_grammar import Case, cases
from tests.fuzz_seeds import SEEDS
from tests.fuzz_target import FuzzTarget, check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run (default 1)")
    parser.add_argument(
        "--round", type=int, default=500, help="examples per Hypothesis round (default 500)"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.round <= 0:
        parser.error("--minutes and --round must be positive")
    # The oracle reads the proxy's line per request; they are captured (``FuzzTarget.running``),
    # not printed.
    configure_logging("json", "info")
    outcomes: Counter[str] = Counter()
    counterexamples: list[bytes] = []
    started = time.monotonic()
    deadline = started + args.minutes * 60
    with FuzzTarget.running() as target:
        for _name, case in SEEDS:
            outcomes[check(target.run(case))] += 1
        last_failing: list[bytes] = []

        @settings(
            max_examples=args.round,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases())
        def one_round(case: Case) -> None:
            try:
                outcomes[check(target.run(case))] += 1
            except AssertionError:
                last_failing[:] = [case.data]
                outcomes["counterexample"] += 1
                raise

        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            try:
                one_round()
            except AssertionError as exc:
                counterexamples.append(last_failing[0])
                print(f"COUNTEREXAMPLE (round {rounds}): {last_failing[0]!r}\n  {exc}", flush=True)
    elapsed = time.monotonic() - started
    total = sum(outcomes.values())
    print(f"{total} cases in {elapsed:.0f} s: {total / elapsed:.0f} examples/s, {rounds} rounds")
    print("outcomes:")
    for outcome, count in outcomes.most_common():
        print(f"  {count:8d}  {count / total:6.1%}  {outcome}")
    print(f"counterexamples: {len(counterexamples)}")
    return 1 if counterexamples else 0


if __name__ == "__main__":
    raise SystemExit(main())
