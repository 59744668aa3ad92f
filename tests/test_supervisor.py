"""How the supervisor describes a worker's end (the processes themselves: ``test_workers``)."""

from __future__ import annotations

import pytest

from proxy.workers.supervisor import describe_exit


@pytest.mark.parametrize(
    ("returncode", "fields"),
    [
        pytest.param(0, {"exit_status": 0}, id="clean"),
        pytest.param(3, {"exit_status": 3}, id="status"),
        pytest.param(-9, {"exit_status": -9, "signal": "SIGKILL"}, id="killed"),
    ],
)
def test_an_exit_is_logged_with_its_status_and_the_signal_that_caused_it(
    returncode: int, fields: dict[str, object]
) -> None:
    assert describe_exit(returncode) == fields
