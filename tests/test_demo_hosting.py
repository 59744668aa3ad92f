"""The cancelling protocol hosted the ways a user hosts their own app, each started for real.

gunicorn (a master and one ``demo_backend.gunicorn_worker`` worker), ``uvicorn.run(app,
http=...)`` and ``uvicorn.Server(uvicorn.Config(app, http=...))``, and the ``uvicorn`` CLI with
``--log-config``. Each serves the demo app on 127.0.0.1 on a port the OS picks; a client hangs up
on a slow GET, and the handler's cancellation shows in the ``hangup.cancel`` logger's line, in the
format the host's logging configuration gave it.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import pytest
from gunicorn.glogging import CONFIG_DEFAULTS

from demo_backend.cancel_methods import ENV_VAR
from tests.log_configs import cancel_line, plain_uvicorn_argv, with_cancel_logger
from tests.support import (
    HANGUP_KINDS,
    HangupKind,
    RawConnection,
    ScriptProcess,
    request_bytes,
    script_path,
)


async def hang_up_on_a_slow_get(
    process: ScriptProcess, port: int, request_id: str, kind: HangupKind = "fin"
) -> None:
    """A GET to /slow, hung up once the handler runs; returns when the cancel line is out."""
    connection = await RawConnection.open(port)
    await connection.send(request_bytes("GET", "/slow?seconds=30", [("X-Request-ID", request_id)]))
    # The demo app's own structlog line: the handler is running.
    await process.wait_for_text(lambda line: "slow_started" in line and request_id in line)
    connection.hang_up(kind)
    await process.wait_for_text(lambda line: line == cancel_line(request_id))


async def port_from(process: ScriptProcess, pattern: str) -> int:
    line = await process.wait_for_text(lambda text: re.search(pattern, text) is not None)
    match = re.search(pattern, line)
    assert match is not None
    return int(match[1])


# uvicorn re-raises the SIGTERM it handled once it has shut down (demo_backend.server explains why
# hangup-demo-backend does not); gunicorn's master exits 0.
UVICORN_STOPPED = -signal.SIGTERM


def assert_clean(process: ScriptProcess, code: int, expected: int = 0) -> None:
    output = "\n".join(process.raw_lines)
    assert code == expected, output
    assert "Traceback" not in output
    assert "Exception in ASGI application" not in output


@pytest.mark.parametrize("kind", HANGUP_KINDS)
@pytest.mark.parametrize(
    "worker", ["CancellingUvicornWorker", "CancellingUvicornH11Worker"], ids=["httptools", "h11"]
)
async def test_gunicorn_with_the_cancelling_worker_cancels_a_get_on_hang_up(
    tmp_path: Path, worker: str, kind: HangupKind
) -> None:
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(f"logconfig_dict = {with_cancel_logger(CONFIG_DEFAULTS)!r}\n")
    argv = [
        script_path("gunicorn"),
        "--config",
        str(config),
        "--worker-class",
        f"demo_backend.gunicorn_worker.{worker}",
        "--workers",
        "1",
        "--bind",
        "127.0.0.1:0",
        "--graceful-timeout",
        "5",
        # gunicorn 25.1+ opens a control socket in $HOME by default: nothing to share between runs.
        "--no-control-socket",
        "demo_backend.app:create_app()",
    ]
    process = await ScriptProcess.start(argv)
    try:
        # The master binds before it forks: a client that connects now waits in the backlog.
        port = await port_from(process, r"Listening at: http://127\.0\.0\.1:(\d+)")
        await hang_up_on_a_slow_get(process, port, f"gunicorn-{worker}-{kind}", kind)
    finally:
        code = await process.stop()  # SIGTERM to the master's PID: a graceful stop, exit 0
    assert_clean(process, code)


SERVE_WITH_RUN = """
import sys, uvicorn
from demo_backend.app import create_app
from demo_backend.protocol import CancellingHttpToolsProtocol
from tests.log_configs import with_cancel_logger
uvicorn.run(
    create_app(), host="127.0.0.1", port=0, http=CancellingHttpToolsProtocol,
    log_config=with_cancel_logger(uvicorn.config.LOGGING_CONFIG),
)
"""

SERVE_WITH_CONFIG = """
import logging.config, uvicorn
from demo_backend.app import create_app
from demo_backend.protocol import CancellingH11Protocol
from tests.log_configs import with_cancel_logger
# The app's own dictConfig; log_config=None tells uvicorn to leave logging alone.
logging.config.dictConfig(with_cancel_logger(uvicorn.config.LOGGING_CONFIG))
config = uvicorn.Config(
    create_app(), host="127.0.0.1", port=0, http=CancellingH11Protocol, log_config=None
)
uvicorn.Server(config).run()
"""


@pytest.mark.parametrize(
    "code", [SERVE_WITH_RUN, SERVE_WITH_CONFIG], ids=["uvicorn.run", "uvicorn.Config"]
)
async def test_programmatic_uvicorn_with_the_cancelling_protocol_cancels_a_get_on_hang_up(
    code: str,
) -> None:
    process = await ScriptProcess.start([sys.executable, "-c", code])
    try:
        port = await port_from(process, r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
        await hang_up_on_a_slow_get(process, port, "programmatic")
    finally:
        exit_code = await process.stop()
    assert_clean(process, exit_code, UVICORN_STOPPED)


async def test_plain_uvicorn_cli_logs_the_cancel_in_the_format_of_its_log_config(
    tmp_path: Path,
) -> None:
    argv = plain_uvicorn_argv("CancellingHttpToolsProtocol", tmp_path)
    process = await ScriptProcess.start(argv)
    try:
        port = await port_from(process, r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
        await hang_up_on_a_slow_get(process, port, "cli-log-config", "rst")
    finally:
        code = await process.stop()
    assert_clean(process, code, UVICORN_STOPPED)
    # The record went through the config and nowhere else: one line, in its format only.
    assert [line for line in process.raw_lines if "handler_cancelled" in line] == []
    assert process.raw_lines.count(cancel_line("cli-log-config")) == 1


async def test_a_bad_cancel_methods_variable_under_plain_uvicorn_is_one_line_and_exit_3() -> None:
    argv = plain_uvicorn_argv("CancellingH11Protocol")
    process = await ScriptProcess.start(argv, env={ENV_VAR: "GET,P OST"})
    code = await process.wait_exit()

    # uvicorn's STARTUP_FAILURE, the status it gives an app it cannot import.
    assert code == 3
    assert process.raw_lines == [
        "hangup: HANGUP_CANCEL_METHODS: 'P OST' is not an HTTP method token"
    ]


async def test_a_bad_variable_stops_uvicorn_workers_instead_of_a_restart_loop() -> None:
    argv = [*plain_uvicorn_argv("CancellingH11Protocol"), "--workers", "2"]
    process = await ScriptProcess.start(argv, env={ENV_VAR: "GET,P OST"})
    await process.wait_exit()

    # Each child says it once and uvicorn's supervisor stops; with any other status it restarts
    # the children for good.
    ours = [line for line in process.raw_lines if line.startswith("hangup: ")]
    assert ours == ["hangup: HANGUP_CANCEL_METHODS: 'P OST' is not an HTTP method token"] * 2
    assert any("failed to start, stopping the parent process" in line for line in process.raw_lines)
    assert not any("died" in line for line in process.raw_lines)
    assert not any("Traceback" in line for line in process.raw_lines)
