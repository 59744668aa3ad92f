"""``hangup-demo-backend`` (and plain ``uvicorn --http demo_backend.protocol:...``) as processes."""

from __future__ import annotations

import importlib.metadata
import re
import signal
import subprocess
from pathlib import Path

import pytest

from demo_backend.cancel_methods import ENV_VAR
from demo_backend.canceller import LOGGER_NAME
from demo_backend.cli import main, parse_options
from tests.log_configs import cancel_line, plain_uvicorn_argv
from tests.support import (
    LOOPBACK,
    RawConnection,
    ScriptProcess,
    request_bytes,
    running_script,
    script_path,
)

BACKEND = "hangup-demo-backend"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--port", "eighty"], id="port-not-a-number"),
        pytest.param(["--port", "70000"], id="port-out-of-range"),
        pytest.param(["--http", "zttp"], id="unknown-http"),
        pytest.param(["--cancel-methods", "GET,*"], id="star-in-list"),
        pytest.param(["--limit-concurrency", "0"], id="zero-concurrency"),
        pytest.param(["--timeout-graceful-shutdown", "-1"], id="negative-timeout"),
        pytest.param(["--log-format", "xml"], id="unknown-log-format"),
        pytest.param(["--colour"], id="unknown-flag"),
    ],
)
def test_invalid_flag_exits_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)

    captured = capsys.readouterr()
    assert exited.value.code == 2
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("hangup-demo-backend: error: ")


def test_invalid_cancel_methods_variable_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_VAR, "GET;POST")
    with pytest.raises(SystemExit) as exited:
        main([])

    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.count("\n") == 1
    assert ENV_VAR in err


def test_flag_overrides_the_cancel_methods_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "POST")
    assert parse_options([]).cancel_methods == {"POST"}
    assert parse_options(["--cancel-methods", "*"]).cancel_methods == {"*"}
    assert parse_options(["--cancel-methods", ""]).cancel_methods == frozenset()


async def test_console_script_rejects_a_bad_flag_without_a_traceback() -> None:
    process = await ScriptProcess.start([script_path(BACKEND), "--port", "eighty"])
    assert await process.wait_exit() == 2
    assert len(process.raw_lines) == 1
    assert "Traceback" not in process.raw_lines[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
async def test_backend_reports_its_port_and_exits_0_on_signal(signum: signal.Signals) -> None:
    process = await ScriptProcess.start([script_path(BACKEND), "--port", "0"])
    try:
        listening = await process.wait_for_event("backend_listening")
        connection = await RawConnection.open(int(listening["port"]))
        await connection.send(request_bytes("GET", "/stats", [("Connection", "close")]))
        response = await connection.read_response()
        await connection.close()
        process.send_signal(signum)
        code = await process.wait_exit()
    finally:
        await process.stop()

    assert listening["host"] == LOOPBACK
    assert listening["port"] > 0
    assert listening["cancel_methods"] == "GET,HEAD,OPTIONS,TRACE"
    assert len(process.events("backend_listening")) == 1
    assert response.status == 200
    assert code == 0
    assert not any("Traceback" in line for line in process.raw_lines)


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_console_script_cancels_a_get_and_finishes_a_post_on_hangup(http: str) -> None:
    argv = [script_path(BACKEND), "--port", "0", "--http", http]
    async with running_script(argv, "backend_listening") as (process, port):
        getting = await RawConnection.open(port)
        await getting.send(request_bytes("GET", "/slow?seconds=30", [("X-Request-ID", "cli-get")]))
        await process.wait_for_event("slow_started", request_id="cli-get")
        getting.hang_up("rst")
        cancelled = await process.wait_for_event("handler_cancelled", request_id="cli-get")

        posting = await RawConnection.open(port)
        headers = [("X-Request-ID", "cli-post")]
        await posting.send(request_bytes("POST", "/slow?seconds=0.1", headers, b"data"))
        await process.wait_for_event("slow_started", request_id="cli-post")
        posting.hang_up("fin")
        await process.wait_for_event("slow_completed", request_id="cli-post")

    assert (cancelled["method"], cancelled["path"], cancelled["level"]) == ("GET", "/slow", "info")
    # The protocol logs through stdlib logging; the project's pipeline renders it like its own.
    assert cancelled["logger"] == LOGGER_NAME
    assert process.events("handler_cancelled") == [cancelled]
    output = "\n".join(process.raw_lines)
    assert "Traceback" not in output
    assert "Exception in ASGI application" not in output


async def test_plain_uvicorn_cli_takes_the_protocol_and_its_policy_from_the_environment(
    tmp_path: Path,
) -> None:
    # Without a handler for hangup.cancel, plain uvicorn (like any stdlib logging set-up) drops
    # its INFO records: the log config gives it one.
    argv = plain_uvicorn_argv("CancellingH11Protocol", tmp_path)
    process = await ScriptProcess.start(argv, env={ENV_VAR: "POST"})
    try:
        running = await process.wait_for_text(lambda line: "Uvicorn running on" in line)
        match = re.search(r":(\d+) ", running)
        assert match is not None, running
        connection = await RawConnection.open(int(match[1]))
        headers = [("X-Request-ID", "uvicorn-post")]
        await connection.send(request_bytes("POST", "/slow?seconds=30", headers, b"data"))
        await process.wait_for_text(lambda line: "slow_started" in line and "uvicorn-post" in line)
        connection.hang_up("fin")
        await process.wait_for_text(lambda line: line == cancel_line("uvicorn-post", "POST"))
    finally:
        await process.stop()


def test_version_prints_the_script_and_the_installed_distribution_version() -> None:
    finished = subprocess.run(
        [script_path(BACKEND), "--version"], capture_output=True, text=True, timeout=30, check=False
    )

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == f"{BACKEND} {importlib.metadata.version('hangup')}\n"
    assert finished.stderr == ""
