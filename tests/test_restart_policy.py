"""When a worker that exited is started again, and when the supervisor gives up instead."""

from __future__ import annotations

import pytest

from proxy.workers.restart_policy import (
    FIRST_RESTART_DELAY,
    MAX_FAILED_STARTS,
    MAX_RESTART_DELAY,
    restart_delay,
    should_give_up,
)


@pytest.mark.parametrize(
    ("failed_starts", "delay"),
    [
        pytest.param(0, FIRST_RESTART_DELAY, id="was-listening"),
        pytest.param(1, 2 * FIRST_RESTART_DELAY, id="one-failed-start"),
        pytest.param(2, 4 * FIRST_RESTART_DELAY, id="two-failed-starts"),
        pytest.param(50, MAX_RESTART_DELAY, id="capped"),
    ],
)
def test_the_restart_delay_doubles_with_each_failed_start_up_to_a_cap(
    failed_starts: int, delay: float
) -> None:
    assert restart_delay(failed_starts) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("failed_starts", "all_started_once", "give_up"),
    [
        pytest.param(0, False, False, id="crash-after-listening-during-first-start"),
        pytest.param(0, True, False, id="crash-after-listening"),
        pytest.param(1, False, True, id="first-generation-cannot-start"),
        pytest.param(1, True, False, id="one-failed-restart"),
        pytest.param(MAX_FAILED_STARTS - 1, True, False, id="just-under-the-limit"),
        pytest.param(MAX_FAILED_STARTS, True, True, id="at-the-limit"),
    ],
)
def test_the_supervisor_gives_up_only_when_restarting_cannot_help(
    failed_starts: int, all_started_once: bool, give_up: bool
) -> None:
    assert should_give_up(failed_starts, all_started_once=all_started_once) is give_up
