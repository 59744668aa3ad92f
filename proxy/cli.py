"""``hangup-proxy``: flags and ``HANGUP_*`` environment variables → ``ProxyConfig`` → run.

Every flag can also be set by an environment variable named ``HANGUP_`` + the flag in upper case
with dashes as underscores (``--upstream-timeout`` → ``HANGUP_UPSTREAM_TIMEOUT``); a flag on the
command line wins over the variable, and with neither the ``ProxyConfig`` field keeps its
default. A bad value gets one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from proxy.logs.configure import LOG_FORMATS, configure_logging
from proxy.observability.provenance import check_package, hangup_version
from proxy.policy.methods import CancelPolicy, parse_cancel_methods
from proxy.policy.routes import load_policy_file, parse_rules
from proxy.serving.server import ListenError, run
from proxy.settings.command_line import OneLineParser
from proxy.settings.config import (
    ProxyConfig,
    format_buffer_size,
    format_optional_size,
    format_size,
    parse_bool,
    parse_buffer_size,
    parse_count,
    parse_grace,
    parse_header_name,
    parse_optional_size,
    parse_seconds,
    parse_size,
    parse_workers,
)
from proxy.upstream.address import parse_upstream
from proxy.wire.address import parse_host_port
from proxy.workers.supervisor import WorkersError, run_supervisor
from proxy.workers.worker import WorkerAssignment, run_worker

LOG_LEVELS = ("debug", "info", "warning", "error")


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip().lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {text!r}")
        return text

    return parse


_DEFAULTS: Mapping[str, object] = {
    field.name: field.default_factory() if field.default_factory is not MISSING else field.default
    for field in fields(ProxyConfig)
}
"""Each ``ProxyConfig`` field's default (``MISSING`` for a required one): the flags' defaults."""


def _shown(default: object) -> str | None:
    """A default as an operator would write it, for --help; None: nothing to show (off)."""
    if default is None or default == ():
        return None
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, CancelPolicy):
        return default.describe()
    return str(default)


@dataclass(frozen=True)
class Option:
    flag: str
    field: str
    parse: Callable[[str], Any]
    help: str
    show: Callable[[Any], str | None] = _shown
    """The default (``ProxyConfig``'s) as --help writes it; returns None to show none."""
    switch: bool = False
    """The flag alone means ``true`` (``--flag false`` and the variable still work)."""
    repeatable: bool = False
    """The flag may be given several times; its values are joined with ``;`` (as in the
    environment variable) before ``parse``."""

    @property
    def env(self) -> str:
        return "HANGUP_" + self.flag.removeprefix("--").replace("-", "_").upper()

    @property
    def required(self) -> bool:
        """With no flag and no variable: an error, as the config field has no default."""
        return _DEFAULTS[self.field] is MISSING

    @property
    def shown_default(self) -> str | None:
        return None if self.required else self.show(_DEFAULTS[self.field])


OPTIONS = (
    Option(
        "--listen",
        "listen",
        parse_host_port,
        "HOST:PORT where clients connect (port 0: any free port, logged at start)",
    ),
    Option(
        "--workers",
        "workers",
        parse_workers,
        "processes serving clients; above 1, a supervisor starts that many workers sharing the "
        "listen address (SO_REUSEPORT), restarts one that exits, forwards SIGTERM/SIGINT to all, "
        "and alone serves --admin, whose /metrics sums every worker's",
    ),
    Option(
        "--upstream",
        "upstream",
        parse_upstream,
        "http://HOST:PORT of the one backend every request is forwarded to, or unix:/PATH for "
        "a backend on a unix socket (required)",
    ),
    Option(
        "--cancel-methods",
        "cancel_policy",
        parse_cancel_methods,
        "comma-separated methods whose upstream connection is closed when the client hangs "
        "up, or '*' for all; other methods are carried to the end and the answer discarded",
    ),
    Option(
        "--cancel-route",
        "route_rules",
        parse_rules,
        "a per-route rule '[METHODS ]PATH=ACTION', ACTION one of cancel, never, grace=SECONDS; "
        "PATH a prefix of whole segments (/slow matches /slow and /slow/x, never /slowly; /api/ "
        "everything under /api/), or a glob with * ? [; repeatable (';' between rules in the "
        "variable); first match wins, then --cancel-methods",
        repeatable=True,
    ),
    Option(
        "--policy-file",
        "policy_rules",
        load_policy_file,
        "a TOML file of [[route]] tables (methods, path, action, grace), tried after "
        "--cancel-route rules",
    ),
    Option(
        "--cancel-grace",
        "cancel_grace",
        parse_grace,
        "seconds a hung-up request under --cancel-methods may still finish before its upstream "
        "connection is closed (an answer in time is discarded, the connection reused); 0: at once",
    ),
    Option(
        "--deadline-header",
        "deadline_header",
        parse_header_name,
        "a request header (e.g. Request-Timeout) in which a trusted client gives the seconds it "
        "will wait; past them 504 and the upstream connection is closed; capped by "
        "--upstream-timeout; off unless given",
    ),
    Option(
        "--upstream-timeout",
        "upstream_timeout",
        parse_seconds,
        "seconds to wait for the upstream's response headers once the request is sent, and "
        "then between two body reads; past it the client gets 504",
    ),
    Option(
        "--connect-timeout",
        "connect_timeout",
        parse_seconds,
        "seconds to wait for a TCP connection to the upstream; past it, or on refusal, 502",
    ),
    Option(
        "--upstream-keepalive-timeout",
        "upstream_keepalive_timeout",
        parse_seconds,
        "seconds an idle upstream connection is pooled; keep it below the backend's own idle "
        "timeout (uvicorn: 5)",
    ),
    Option(
        "--upstream-max-connections",
        "upstream_max_connections",
        parse_count,
        "most upstream requests and WebSocket tunnels at once (per worker); one more is answered "
        "503 at once, never queued",
    ),
    Option(
        "--client-keepalive-timeout",
        "client_keepalive_timeout",
        parse_seconds,
        "seconds an idle client keep-alive connection stays open",
    ),
    Option(
        "--drain-timeout",
        "drain_timeout",
        parse_seconds,
        "on SIGTERM/SIGINT: stop accepting, close idle connections, give in-flight requests this "
        "many seconds, then exit 0 (a second signal exits at once with status 1)",
    ),
    Option(
        "--header-timeout",
        "header_timeout",
        parse_seconds,
        "seconds a client has to send a whole request header block; past it 408 and close",
    ),
    Option(
        "--body-timeout",
        "body_timeout",
        parse_seconds,
        "seconds the whole request body has, from the end of its head; past it 408 and close",
    ),
    Option(
        "--request-buffer-size",
        "request_buffer_size",
        parse_buffer_size,
        "a request body up to this size is read whole before the upstream is contacted; a larger "
        "one is streamed",
        show=format_buffer_size,
    ),
    Option(
        "--send-timeout",
        "send_timeout",
        parse_seconds,
        "seconds a client may accept no byte of its answer; past it the client is cut and the "
        "upstream connection closed",
    ),
    Option(
        "--max-client-connections",
        "max_client_connections",
        parse_count,
        "most client connections at once; past it a new connection gets 503 and is closed",
    ),
    Option(
        "--max-uri-size",
        "max_uri_size",
        parse_size,
        "longest request target (414 past it); sizes take k, m, g suffixes",
        show=format_size,
    ),
    Option(
        "--max-header-size",
        "max_header_field_size",
        parse_size,
        "longest single header field name or value (431 past it)",
        show=format_size,
    ),
    Option(
        "--max-header-block-size",
        "max_header_block_size",
        parse_size,
        "most bytes in all request header fields together (431 past it)",
        show=format_size,
    ),
    Option(
        "--max-headers",
        "max_headers",
        parse_count,
        "most request header fields (431 past it)",
    ),
    Option(
        "--max-body-size",
        "max_body_size",
        parse_optional_size,
        "largest request body (413 past it, also mid-stream); 'off' for no limit",
        show=format_optional_size,
    ),
    Option(
        "--admin",
        "admin",
        parse_host_port,
        "HOST:PORT of the admin listener (/healthz, /livez, /readyz, /metrics), separate from "
        "client traffic; off unless given (port 0: any free port, logged at start)",
    ),
    Option(
        "--ready-check-upstream",
        "ready_check_upstream",
        parse_bool,
        "also answer /readyz 503 while the upstream refuses TCP connections (never a start-up "
        "check)",
        switch=True,
    ),
    Option(
        "--log-format",
        "log_format",
        _choice(LOG_FORMATS),
        "json (one object per line) or console (for people)",
    ),
    Option(
        "--log-level",
        "log_level",
        _choice(LOG_LEVELS),
        "lowest level written: " + ", ".join(LOG_LEVELS),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="hangup-proxy",
        description="A reverse proxy that closes the upstream connection the moment the client "
        "hangs up, so the backend stops working for nobody.",
        epilog="Every flag can also be set as an environment variable: HANGUP_ + the flag's name "
        "in upper case (e.g. HANGUP_UPSTREAM_TIMEOUT). Flags win over variables.",
    )
    # The installed distribution's version, the one hangup_build_info reports; argparse prints
    # it to stdout and exits 0 before any other flag is checked (so --upstream is not needed).
    parser.add_argument(
        "--version",
        action="version",
        version=f"{parser.prog} {hangup_version()}",
        help="print hangup-proxy and the installed version, then exit",
    )
    for option in OPTIONS:
        shown = option.shown_default
        default = "" if shown is None else f"; default {shown}"
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if option.switch else {}
        if option.repeatable:
            switch = {"action": "append"}
        parser.add_argument(
            option.flag,
            dest=option.field,
            metavar=option.flag.removeprefix("--").upper().replace("-", "_"),
            default=None,
            help=f"{option.help} [env {option.env}{default}]",
            **switch,
        )
    return parser


def parse_config(argv: Sequence[str], environ: Mapping[str, str]) -> ProxyConfig:
    """Build the config from flags over environment variables over defaults.

    Raises ``SystemExit(2)`` with one line on stderr for any invalid value.
    """
    parser = build_parser()
    namespace = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw, source = getattr(namespace, option.field), option.flag
        if isinstance(raw, list):
            raw = ";".join(raw)
        # An empty variable counts as unset: `HANGUP_X=` in a compose file must not silently
        # mean "empty" (for --cancel-methods that would switch cancellation off).
        if raw is None and environ.get(option.env):
            raw, source = environ[option.env], option.env
        if raw is None:
            if option.required:
                parser.error(f"{option.flag} is required (or set {option.env})")
            continue  # ProxyConfig's own default
        try:
            values[option.field] = option.parse(raw)
        except ValueError as exc:
            parser.error(f"{source}: {exc}")
    return ProxyConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    # First, in the supervisor and in every worker: is the imported `proxy` package hangup's?
    check_package()
    arguments = sys.argv[1:] if argv is None else list(argv)
    config = parse_config(arguments, os.environ)
    configure_logging(config.log_format, config.log_level)
    # Set only by a supervisor for the workers it starts (proxy.workers.supervisor,
    # proxy.workers.worker).
    assignment = WorkerAssignment.from_environ(os.environ)
    try:
        if assignment is not None:
            run_worker(config, assignment)
        elif config.workers > 1:
            return run_supervisor(config, arguments)
        else:
            run(config)
    except (ListenError, WorkersError) as exc:
        # An address taken or not ours, or workers that cannot start: say so in one line.
        sys.stderr.write(f"hangup-proxy: error: {exc}\n")
        return 1
    return 0
