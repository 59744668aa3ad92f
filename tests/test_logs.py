"""One pipeline: our events and aiohttp's/uvicorn's stdlib records render alike.

Each case runs in a fresh interpreter: structlog caches configured loggers on first use, so
reconfiguring inside the test process would detach the other tests' log capture.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.raw_upstream import RawUpstream
from tests.support import (
    LOOPBACK,
    RawConnection,
    ScriptProcess,
    request_bytes,
    run_python,
    script_path,
)

SCRIPT = """
import logging, sys, structlog
from proxy.logs.configure import configure_logging
configure_logging(sys.argv[1], sys.argv[2])
structlog.get_logger("hangup.test").info("request", status=499, outcome="client_hangup")
structlog.get_logger("hangup.test").debug("debug_event")
logging.getLogger("aiohttp.server").error("Error handling request from %s", "127.0.0.1")
logging.getLogger("uvicorn.error").debug("uvicorn debug")
"""


def run_logging(log_format: str, level: str) -> list[str]:
    return run_python(SCRIPT, log_format, level)


def test_structlog_events_and_aiohttp_records_are_both_json_lines() -> None:
    ours, theirs = (json.loads(line) for line in run_logging("json", "info"))

    assert (ours["event"], ours["level"], ours["status"]) == ("request", "info", 499)
    assert theirs["event"] == "Error handling request from 127.0.0.1"
    assert (theirs["level"], theirs["logger"]) == ("error", "aiohttp.server")
    assert set(ours) >= {"timestamp", "level", "event"}
    assert set(theirs) >= {"timestamp", "level", "event"}


@pytest.mark.parametrize(("level", "count"), [("debug", 4), ("info", 2), ("error", 1)])
def test_level_filters_both_pipelines(level: str, count: int) -> None:
    assert len(run_logging("json", level)) == count


def test_console_format_is_one_readable_line_per_event() -> None:
    lines = run_logging("console", "info")
    assert len(lines) == 2
    assert "request" in lines[0]
    assert "status=499" in lines[0]
    assert "Error handling request from 127.0.0.1" in lines[1]


async def test_the_proxys_console_request_line_starts_with_status_method_path_and_duration(
    upstream: RawUpstream,
) -> None:
    proxy = await ScriptProcess.start(
        [
            script_path("hangup-proxy"),
            *("--listen", f"{LOOPBACK}:0", "--upstream", upstream.url, "--log-format", "console"),
        ]
    )
    try:
        listening = await proxy.wait_for_text(lambda text: " proxy_listening " in text)
        port = re.search(r" port=(\d+)", listening)
        assert port is not None, listening
        client = await RawConnection.open(int(port.group(1)))
        await client.send(request_bytes("GET", "/reports/7?x=1", [("X-Request-ID", "c-1")]))
        assert (await client.read_response()).status == 200
        await client.close()
        line = await proxy.wait_for_text(lambda text: "request_id=c-1" in text)
    finally:
        await proxy.stop()

    # "<time> [info     ] request    status=200 method=GET ...", one line, no colours.
    head, _, fields = line.partition("] request ")
    assert head.endswith("[info     "), line
    keys = re.findall(r"(?:^| )(\w+)=", fields.strip())
    assert keys[:4] == ["status", "method", "path", "duration_ms"], line
    assert keys[4:] == sorted(keys[4:]) == ["client", "outcome", "request_id", "upstream_status"]
    assert fields.split()[:3] == ["status=200", "method=GET", "path=/reports/7"], line
    assert "\x1b[" not in line
