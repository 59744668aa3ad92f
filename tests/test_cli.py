"""``hangup-proxy``'s command line: flags over ``HANGUP_*`` variables over defaults, and errors.

The first half calls ``parse_config`` in-process; the second starts the real console script.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import OPTIONS, parse_config
from proxy.policy.methods import CancelPolicy
from proxy.policy.routes import Action, Rule
from proxy.settings.config import ProxyConfig
from proxy.upstream.address import Upstream, parse_upstream
from proxy.wire.address import HostPort
from tests.support import LOOPBACK, WAIT, proxy_argv, running_script, script_path

# Never contacted: every process started here fails or exits before it forwards anything.
UPSTREAM = f"http://{LOOPBACK}:9"


POLICY_FILE = str(Path(__file__).parent / "data" / "policy.toml")
POLICY_RULES = (
    Rule(frozenset({"POST"}), "/v1/chat/completions", Action.GRACE, 5.0, "file-1"),
    Rule(None, "/admin/", Action.NEVER, 0.0, "file-2"),
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One option: its names, its default as --help shows it, and two distinct valid values."""

    flag: str
    env: str
    field: str
    default: str | None
    flag_text: str
    flag_value: Any
    env_text: str
    env_value: Any


ROWS = [
    Row(
        "--listen",
        "HANGUP_LISTEN",
        "listen",
        "127.0.0.1:8080",
        "127.0.0.1:9001",
        HostPort(LOOPBACK, 9001),
        "[::1]:9002",
        HostPort("::1", 9002),
    ),
    Row("--workers", "HANGUP_WORKERS", "workers", "1", "2", 2, "4", 4),
    Row(
        "--upstream",
        "HANGUP_UPSTREAM",
        "upstream",
        None,
        "http://127.0.0.1:8001",
        Upstream(LOOPBACK, 8001),
        "http://backend",
        Upstream("backend", 80),
    ),
    Row(
        "--cancel-methods",
        "HANGUP_CANCEL_METHODS",
        "cancel_policy",
        "GET,HEAD,OPTIONS,TRACE",
        "post,PUT",
        CancelPolicy(frozenset({"POST", "PUT"})),
        "*",
        CancelPolicy(None),
    ),
    Row(
        "--cancel-route",
        "HANGUP_CANCEL_ROUTE",
        "route_rules",
        None,
        "GET /a/*=cancel",
        (Rule(frozenset({"GET"}), "/a/*", Action.CANCEL, 0.0, "route-1"),),
        "/b=never;POST /c=grace=2",
        (
            Rule(None, "/b", Action.NEVER, 0.0, "route-1"),
            Rule(frozenset({"POST"}), "/c", Action.GRACE, 2.0, "route-2"),
        ),
    ),
    Row(
        "--policy-file",
        "HANGUP_POLICY_FILE",
        "policy_rules",
        None,
        POLICY_FILE,
        POLICY_RULES,
        POLICY_FILE,
        POLICY_RULES,
    ),
    Row("--cancel-grace", "HANGUP_CANCEL_GRACE", "cancel_grace", "0", "2", 2.0, "0.5", 0.5),
    Row(
        "--deadline-header",
        "HANGUP_DEADLINE_HEADER",
        "deadline_header",
        None,
        "Request-Timeout",
        "Request-Timeout",
        "X-Deadline",
        "X-Deadline",
    ),
    Row(
        "--upstream-timeout",
        "HANGUP_UPSTREAM_TIMEOUT",
        "upstream_timeout",
        "60",
        "1.5",
        1.5,
        "2.5",
        2.5,
    ),
    Row(
        "--connect-timeout",
        "HANGUP_CONNECT_TIMEOUT",
        "connect_timeout",
        "5",
        "1",
        1.0,
        "2",
        2.0,
    ),
    Row(
        "--upstream-keepalive-timeout",
        "HANGUP_UPSTREAM_KEEPALIVE_TIMEOUT",
        "upstream_keepalive_timeout",
        "4",
        "3",
        3.0,
        "3.5",
        3.5,
    ),
    Row(
        "--upstream-max-connections",
        "HANGUP_UPSTREAM_MAX_CONNECTIONS",
        "upstream_max_connections",
        "1024",
        "8",
        8,
        "16",
        16,
    ),
    Row(
        "--client-keepalive-timeout",
        "HANGUP_CLIENT_KEEPALIVE_TIMEOUT",
        "client_keepalive_timeout",
        "75",
        "10",
        10.0,
        "20",
        20.0,
    ),
    Row(
        "--drain-timeout",
        "HANGUP_DRAIN_TIMEOUT",
        "drain_timeout",
        "25",
        "1",
        1.0,
        "2",
        2.0,
    ),
    Row("--header-timeout", "HANGUP_HEADER_TIMEOUT", "header_timeout", "15", "5", 5.0, "7.5", 7.5),
    Row("--body-timeout", "HANGUP_BODY_TIMEOUT", "body_timeout", "60", "30", 30.0, "45", 45.0),
    Row(
        "--request-buffer-size",
        "HANGUP_REQUEST_BUFFER_SIZE",
        "request_buffer_size",
        "64k",
        "1m",
        1024 * 1024,
        "off",
        0,
    ),
    Row("--send-timeout", "HANGUP_SEND_TIMEOUT", "send_timeout", "60", "5", 5.0, "90.5", 90.5),
    Row(
        "--max-client-connections",
        "HANGUP_MAX_CLIENT_CONNECTIONS",
        "max_client_connections",
        "10000",
        "500",
        500,
        "600",
        600,
    ),
    Row("--max-uri-size", "HANGUP_MAX_URI_SIZE", "max_uri_size", "8k", "4k", 4096, "16384", 16384),
    Row(
        "--max-header-size",
        "HANGUP_MAX_HEADER_SIZE",
        "max_header_field_size",
        "16k",
        "8k",
        8192,
        "32K",
        32768,
    ),
    Row(
        "--max-header-block-size",
        "HANGUP_MAX_HEADER_BLOCK_SIZE",
        "max_header_block_size",
        "64k",
        "128k",
        131072,
        "1m",
        1048576,
    ),
    Row("--max-headers", "HANGUP_MAX_HEADERS", "max_headers", "100", "50", 50, "200", 200),
    Row(
        "--max-body-size",
        "HANGUP_MAX_BODY_SIZE",
        "max_body_size",
        "off",
        "10m",
        10485760,
        "off",
        None,
    ),
    Row(
        "--admin",
        "HANGUP_ADMIN",
        "admin",
        None,
        "127.0.0.1:9101",
        HostPort(LOOPBACK, 9101),
        "0.0.0.0:9102",
        HostPort("0.0.0.0", 9102),
    ),
    Row(
        "--ready-check-upstream",
        "HANGUP_READY_CHECK_UPSTREAM",
        "ready_check_upstream",
        "false",
        "false",
        False,
        "yes",
        True,
    ),
    Row(
        "--log-format",
        "HANGUP_LOG_FORMAT",
        "log_format",
        "json",
        "json",
        "json",
        "console",
        "console",
    ),
    Row(
        "--log-level",
        "HANGUP_LOG_LEVEL",
        "log_level",
        "info",
        "debug",
        "debug",
        "warning",
        "warning",
    ),
]
OPTION_ROWS = [pytest.param(row, id=row.flag) for row in ROWS]


def test_every_option_and_config_field_is_in_the_table() -> None:
    assert [(option.flag, option.env, option.field) for option in OPTIONS] == [
        (row.flag, row.env, row.field) for row in ROWS
    ]
    assert {row.field for row in ROWS} == {field.name for field in dataclasses.fields(ProxyConfig)}


# --- parse_config, in-process --------------------------------------------------------------------


@pytest.mark.parametrize("row", OPTION_ROWS)
def test_flag_wins_over_its_environment_variable(row: Row) -> None:
    config = parse_config(
        [row.flag, row.flag_text], {"HANGUP_UPSTREAM": UPSTREAM, row.env: row.env_text}
    )

    assert getattr(config, row.field) == row.flag_value


@pytest.mark.parametrize("row", OPTION_ROWS)
def test_environment_variable_is_used_when_its_flag_is_absent(row: Row) -> None:
    config = parse_config([], {"HANGUP_UPSTREAM": UPSTREAM, row.env: row.env_text})

    assert getattr(config, row.field) == row.env_value


def test_defaults_are_the_config_dataclass_defaults() -> None:
    config = parse_config(["--upstream", UPSTREAM], {})

    assert config == ProxyConfig(upstream=parse_upstream(UPSTREAM))
    assert config.listen == HostPort(LOOPBACK, 8080)
    assert config.cancel_policy == CancelPolicy(frozenset({"GET", "HEAD", "OPTIONS", "TRACE"}))


def test_admin_listener_is_off_and_upstream_not_probed_by_default() -> None:
    config = parse_config(["--upstream", UPSTREAM], {})

    assert config.admin is None
    assert config.ready_check_upstream is False


def test_ready_check_upstream_alone_switches_the_check_on() -> None:
    config = parse_config(["--ready-check-upstream", "--upstream", UPSTREAM], {})

    assert config.ready_check_upstream is True


def test_unrelated_environment_variables_are_ignored() -> None:
    environ = {"HANGUP_UPSTREAM": UPSTREAM, "HANGUP_NOT_AN_OPTION": "x", "UPSTREAM_TIMEOUT": "1"}

    assert parse_config([], environ) == ProxyConfig(upstream=parse_upstream(UPSTREAM))


def single_error_line(
    capsys: pytest.CaptureFixture[str], argv: Sequence[str], environ: Mapping[str, str]
) -> str:
    """The one stderr line ``parse_config`` writes before it exits with status 2."""
    with pytest.raises(SystemExit) as exited:
        parse_config(argv, environ)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.endswith("\n")
    return captured.err.rstrip("\n")


def test_missing_upstream_is_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    line = single_error_line(capsys, [], {})

    assert line == "hangup-proxy: error: --upstream is required (or set HANGUP_UPSTREAM)"


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        pytest.param(["--listen", "8080"], {}, "--listen: expected HOST:PORT", id="listen"),
        pytest.param(
            ["--upstream", "https://127.0.0.1"], {}, "--upstream: upstream must be", id="upstream"
        ),
        pytest.param(
            ["--cancel-methods", "GET,*"], {}, "--cancel-methods: '*' must stand", id="cancel"
        ),
        pytest.param(
            ["--upstream-timeout", "abc"],
            {},
            "--upstream-timeout: expected a number of seconds, got 'abc'",
            id="upstream-timeout",
        ),
        pytest.param(
            ["--connect-timeout", "0"], {}, "--connect-timeout: expected a positive", id="connect"
        ),
        pytest.param(
            ["--upstream-keepalive-timeout", "-1"],
            {},
            "--upstream-keepalive-timeout: expected a positive",
            id="upstream-keepalive",
        ),
        pytest.param(
            ["--upstream-max-connections", "0"],
            {},
            "--upstream-max-connections: expected a whole number",
            id="max-connections",
        ),
        pytest.param(
            ["--client-keepalive-timeout", "inf"],
            {},
            "--client-keepalive-timeout: expected a positive",
            id="client-keepalive",
        ),
        pytest.param(
            ["--drain-timeout", "nan"],
            {},
            "--drain-timeout: expected a positive",
            id="drain",
        ),
        pytest.param(
            ["--workers", "0"],
            {},
            "--workers: expected a whole number from 1 to 256, got '0'",
            id="workers-zero",
        ),
        pytest.param(
            ["--workers", "abc"],
            {},
            "--workers: expected a whole number from 1 to 256, got 'abc'",
            id="workers-not-a-number",
        ),
        pytest.param(
            ["--workers", "257"], {}, "--workers: expected a whole", id="workers-too-many"
        ),
        pytest.param(
            [], {"HANGUP_WORKERS": "-1"}, "HANGUP_WORKERS: expected a whole", id="workers-from-env"
        ),
        pytest.param(["--admin", "9100"], {}, "--admin: expected HOST:PORT", id="admin"),
        pytest.param(
            ["--ready-check-upstream", "maybe"],
            {},
            "--ready-check-upstream: expected one of 1, true",
            id="ready-check-upstream",
        ),
        pytest.param(
            ["--log-format", "xml"], {}, "--log-format: expected one of json, console", id="format"
        ),
        pytest.param(
            ["--log-level", "verbose"], {}, "--log-level: expected one of debug", id="level"
        ),
        pytest.param(
            [],
            {"HANGUP_UPSTREAM_TIMEOUT": "abc"},
            "HANGUP_UPSTREAM_TIMEOUT: expected",
            id="from-env",
        ),
        pytest.param(
            ["--upstream-timeout", "abc"],
            {"HANGUP_UPSTREAM_TIMEOUT": "5"},
            "--upstream-timeout: expected",
            id="bad-flag-over-good-env",
        ),
        pytest.param(
            ["--upstream-timeout", "1\nTraceback"],
            {},
            "--upstream-timeout: expected a number of seconds, got '1\\nTraceback'",
            id="newline-in-value-stays-on-one-line",
        ),
        pytest.param(["--listen"], {}, "argument --listen: expected one argument", id="no-value"),
        pytest.param(["--nope", "1"], {}, "unrecognized arguments: --nope 1", id="unknown-flag"),
    ],
)
def test_bad_value_is_one_line_naming_the_flag_and_exit_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], expected: str
) -> None:
    line = single_error_line(capsys, argv, {"HANGUP_UPSTREAM": UPSTREAM, **environ})

    assert line.startswith("hangup-proxy: error: ")
    assert expected in line


# --- the real console script ---------------------------------------------------------------------


def run_proxy(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``hangup-proxy`` to its exit (bounded), with no ``HANGUP_*`` inherited from the test."""
    inherited = {
        name: value for name, value in os.environ.items() if not name.startswith("HANGUP_")
    }
    return subprocess.run(
        [script_path("hangup-proxy"), *args],
        env={**inherited, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


@pytest.fixture(scope="module")
def help_text() -> str:
    finished = run_proxy("--help")
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == ""
    # argparse wraps to the terminal's width; compare with every run of whitespace as one space.
    return " ".join(finished.stdout.split())


@pytest.mark.parametrize("row", OPTION_ROWS)
def test_help_shows_every_flag_with_its_environment_variable_and_default(
    help_text: str, row: Row
) -> None:
    assert f" {row.flag} " in help_text
    if row.default is None:
        assert f"[env {row.env}]" in help_text
    else:
        assert f"[env {row.env}; default {row.default}]" in help_text


def test_help_says_upstream_is_required(help_text: str) -> None:
    assert "(required)" in help_text


def test_help_says_a_request_past_the_upstream_limit_gets_503_at_once(help_text: str) -> None:
    # As proxy.serving.forward's _slot_taken does; an older text said requests "wait for a free
    # one".
    assert "one more is answered 503 at once, never queued" in help_text
    assert "wait for a free one" not in help_text


def test_help_says_a_route_prefix_matches_whole_segments(help_text: str) -> None:
    assert "PATH a prefix of whole segments (/slow matches /slow and /slow/x, never /slowly" in (
        help_text
    )


def test_version_prints_the_installed_distributions_version_and_exits_0() -> None:
    finished = run_proxy("--version")

    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == ""
    # The distribution is "hangup" (pyproject.toml), whatever the import package is called.
    assert finished.stdout == f"hangup-proxy {importlib.metadata.version('hangup')}\n"


async def test_the_start_up_line_lists_the_loaded_policy() -> None:
    argv = proxy_argv(
        UPSTREAM,
        *("--cancel-route", "POST /slow=cancel", "--cancel-route", "get,HEAD /v1/chat/*=grace=2.5"),
        *("--policy-file", POLICY_FILE, "--cancel-methods", "GET,HEAD"),
        *("--cancel-grace", "1.5", "--deadline-header", "Request-Timeout"),
    )
    async with running_script(argv, "proxy_listening") as (proxy, _):
        [line] = proxy.events("proxy_listening")

    # In the order they are tried, by the names request lines and metrics give them.
    assert list(line["cancel_routes"].items()) == [
        ("route-1", "POST /slow=cancel"),
        ("route-2", "GET,HEAD /v1/chat/*=grace=2.5"),
        ("file-1", "POST /v1/chat/completions=grace=5"),
        ("file-2", "/admin/=never"),
    ]
    assert (line["cancel_methods"], line["cancel_grace"], line["deadline_header"]) == (
        "GET,HEAD",
        1.5,
        "Request-Timeout",
    )


async def test_the_start_up_line_lists_the_default_policy_when_none_is_given() -> None:
    async with running_script(proxy_argv(UPSTREAM), "proxy_listening") as (proxy, _):
        [line] = proxy.events("proxy_listening")

    assert line["cancel_routes"] == {}
    assert line["cancel_methods"] == "GET,HEAD,OPTIONS,TRACE"
    assert (line["cancel_grace"], line["deadline_header"]) == (0.0, None)


def assert_one_error_line(finished: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in finished.stdout + finished.stderr
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith("hangup-proxy: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param(
            ["--upstream", UPSTREAM, "--upstream-timeout", "abc"],
            {},
            "--upstream-timeout: expected a number of seconds",
            id="bad-flag",
        ),
        pytest.param(
            ["--upstream", UPSTREAM],
            {"HANGUP_UPSTREAM_TIMEOUT": "abc"},
            "HANGUP_UPSTREAM_TIMEOUT: expected a number of seconds",
            id="bad-environment-variable",
        ),
        pytest.param([], {}, "--upstream is required", id="missing-upstream"),
        pytest.param(
            ["--upstream", UPSTREAM, "--workers", "0"],
            {},
            "--workers: expected a whole number from 1 to 256, got '0'",
            id="workers-zero",
        ),
        pytest.param(
            ["--upstream", UPSTREAM],
            {"HANGUP_WORKERS": "abc"},
            "HANGUP_WORKERS: expected a whole number from 1 to 256, got 'abc'",
            id="workers-from-env",
        ),
    ],
)
def test_script_reports_a_bad_value_in_one_line_with_exit_status_2(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    finished = run_proxy(*args, env=env)

    assert finished.returncode == 2
    assert finished.stdout == ""
    assert expected in assert_one_error_line(finished)


def listen_on_taken_port(port: int) -> subprocess.CompletedProcess[str]:
    return run_proxy("--upstream", UPSTREAM, "--listen", f"{LOOPBACK}:{port}")


def test_script_reports_a_listen_address_in_use_in_one_line(taken_port: int) -> None:
    finished = listen_on_taken_port(taken_port)

    assert finished.returncode != 0
    line = assert_one_error_line(finished)
    assert f"cannot listen on {LOOPBACK}:{taken_port}" in line


def test_script_logs_no_error_when_the_listen_address_is_in_use(taken_port: int) -> None:
    finished = listen_on_taken_port(taken_port)

    errors = [
        line for line in map(json.loads, finished.stdout.splitlines()) if line["level"] == "error"
    ]
    assert errors == []
