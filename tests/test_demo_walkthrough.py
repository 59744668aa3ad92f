"""``scripts/demo``'s walkthrough run for real (backend and proxy as children), and its helpers."""

from __future__ import annotations

import signal
import sys

import pytest

from demo_backend.child_process import ChildProcess, ExpectationError
from demo_backend.walkthrough import check
from tests.support import ScriptProcess


async def test_walkthrough_shows_a_cancelled_get_and_a_completed_post_then_exits_0() -> None:
    process = await ScriptProcess.start([sys.executable, "-m", "demo_backend.walkthrough"])
    code = await process.wait_exit(timeout=60)
    output = "\n".join(process.raw_lines)

    assert code == 0, output
    assert "handler_cancelled  request_id=demo-hangup-get" in output
    assert "slow_completed     request_id=demo-hangup-post" in output
    assert output.count("outcome=client_hangup") == 2
    assert "proxy exited 0, backend exited 0" in output
    assert "Traceback" not in output


async def test_child_that_exits_early_fails_the_expectation_with_its_status() -> None:
    child = await ChildProcess.start(
        "quitter", [sys.executable, "-c", 'print(\'{"event": "other"}\'); raise SystemExit(3)']
    )
    with pytest.raises(ExpectationError, match=r"quitter exited \(status 3\) before it logged"):
        await child.wait_for_event("ready", 10)
    assert child.lines == [{"event": "other"}]


async def test_child_that_stays_silent_fails_the_expectation_after_the_bound() -> None:
    child = await ChildProcess.start(
        "mute", [sys.executable, "-c", "import signal; signal.pause()"]
    )
    try:
        with pytest.raises(ExpectationError, match=r"mute did not log ready within 0.2 s"):
            await child.wait_for_event("ready", 0.2)
    finally:
        code = await child.stop(10)
    assert code == -signal.SIGTERM


def test_check_names_the_fields_that_differ() -> None:
    check("proxy", {"status": 499, "outcome": "client_hangup"}, status=499)
    with pytest.raises(ExpectationError, match="'outcome': 'completed'"):
        check("proxy", {"status": 200, "outcome": "completed"}, outcome="client_hangup")
