"""``hangup-demo-backend``: the demo app on uvicorn with the cancelling protocol.

Flags are validated before anything starts; a bad one ends in one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import uvicorn

from demo_backend.app import create_app
from demo_backend.cancel_methods import (
    ENV_VAR,
    cancel_methods_from_env,
    trust_decision_header_from_env,
)
from demo_backend.server import BackendServer
from demo_backend.work.routes import WorkSettings
from proxy.logs.configure import LOG_FORMATS, LogFormat, configure_logging
from proxy.observability.provenance import hangup_version
from proxy.policy.decision_header import DECISION_HEADER, TRUST_VAR
from proxy.policy.methods import CancelPolicy, parse_cancel_methods
from proxy.settings.command_line import OneLineParser
from proxy.settings.config import parse_bool

if TYPE_CHECKING:
    from demo_backend.protocol import HttpImplementation

PROG = "hangup-demo-backend"
HTTP_IMPLEMENTATIONS = ("h11", "httptools")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
POSTGRES_DSN_VAR = "HANGUP_DEMO_POSTGRES_DSN"
DOWNSTREAM_VAR = "HANGUP_DEMO_DOWNSTREAM"


@dataclass(frozen=True)
class BackendOptions:
    """Everything the backend needs, validated."""

    host: str
    """Address to bind. Default 127.0.0.1 (loopback: the proxy is the only intended client)."""
    port: int
    """TCP port. Default 8000; 0 picks a free port, reported in the ``backend_listening`` line."""
    uds: str | None
    """A unix socket path to listen on instead of TCP (host and port are then unused)."""
    http: HttpImplementation
    """uvicorn HTTP implementation, ``h11`` or ``httptools``. Default httptools when installed."""
    cancel_methods: frozenset[str]
    """Methods cancelled on hang-up (``*`` = all). Default GET,HEAD,OPTIONS,TRACE."""
    trust_decision_header: bool
    """Follow the proxy's ``Hangup-Decision`` header where a request carries one. Default off:
    only safe when every client comes through hangup (``proxy.policy.decision_header``)."""
    limit_concurrency: int | None
    """uvicorn's limit on connections and on tasks; beyond it, 503. Default None: no limit."""
    timeout_graceful_shutdown: int | None
    """Seconds running requests get at shutdown before being cancelled. Default None: no limit."""
    log_format: LogFormat
    """``json`` (default: one JSON object per line) or ``console``."""
    log_level: str
    """Minimum level logged. Default info."""
    work: WorkSettings
    """Where ``/work/postgres`` and ``/work/relay`` reach out to; unset, they answer 503."""


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port between 0 and 65535, got {text!r}")
    return value


def _cancel_methods(text: str) -> frozenset[str]:
    try:
        return parse_cancel_methods(text).names
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _postgres_dsn(text: str) -> str:
    """A libpq URI (what asyncpg takes): ``postgresql://[user[:password]@]host[:port]/db``."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("postgres", "postgresql") or not (parts.hostname or parts.query):
        raise argparse.ArgumentTypeError(
            f"expected a DSN such as postgresql://user@127.0.0.1:5432/db, got {text!r}"
        )
    try:
        _ = parts.port
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad port in DSN {text!r}") from exc
    return text


def _downstream(text: str) -> str:
    """An ``http://`` or ``https://`` base URL with a host; ``/slow`` is called below it."""
    parts = urllib.parse.urlsplit(text)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise argparse.ArgumentTypeError(
            f"expected a URL such as http://127.0.0.1:8080, got {text!r}"
        )
    return text.rstrip("/")


def default_http() -> str:
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="The hangup demo backend: slow endpoints on uvicorn, cancelled on hang-up.",
        hint=" (see --help)",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"{PROG} {hangup_version()}",
        help="print hangup-demo-backend and the installed version, then exit",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port; 0 = any free port")
    parser.add_argument(
        "--uds", default=None, metavar="PATH", help="listen on this unix socket instead of TCP"
    )
    parser.add_argument(
        "--http",
        choices=HTTP_IMPLEMENTATIONS,
        default=default_http(),
        help="uvicorn HTTP implementation (default httptools when installed)",
    )
    parser.add_argument(
        "--cancel-methods",
        type=_cancel_methods,
        default=None,
        metavar="LIST",
        help=f"comma-separated methods cancelled on hang-up, or '*' (env {ENV_VAR}; "
        "default GET,HEAD,OPTIONS,TRACE)",
    )
    parser.add_argument(
        "--trust-decision-header",
        type=_bool,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help=f"cancel exactly what the proxy's {DECISION_HEADER} header says (env {TRUST_VAR}; "
        "default false); only when every client comes through hangup",
    )
    parser.add_argument("--limit-concurrency", type=_positive_int, default=None, metavar="N")
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=_non_negative_int,
        default=None,
        metavar="S",
        help="seconds to let running requests finish at shutdown (default: wait for them)",
    )
    parser.add_argument(
        "--postgres-dsn",
        type=_postgres_dsn,
        default=None,
        metavar="DSN",
        help=f"PostgreSQL for /work/postgres (env {POSTGRES_DSN_VAR}; default none: 503)",
    )
    parser.add_argument(
        "--postgres-pool-size",
        type=_positive_int,
        default=10,
        metavar="N",
        help="most pooled PostgreSQL connections (default 10)",
    )
    parser.add_argument(
        "--downstream",
        type=_downstream,
        default=None,
        metavar="URL",
        help=f"service whose /slow /work/relay calls (env {DOWNSTREAM_VAR}; default none: 503)",
    )
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="json")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return parser


def _flag_or_env(
    parser: argparse.ArgumentParser, flag: str | None, var: str, parse: Callable[[str], str]
) -> str | None:
    """The flag's value, else the non-empty variable ``var`` parsed; a bad one exits 2."""
    if flag is not None or not os.environ.get(var):
        return flag
    try:
        return parse(os.environ[var])
    except argparse.ArgumentTypeError as exc:
        parser.error(f"{var}: {exc}")


def parse_options(argv: list[str] | None) -> BackendOptions:
    """Flags (then ``HANGUP_CANCEL_METHODS``) to options; exits 2 with one line when invalid."""
    parser = build_parser()
    args = parser.parse_args(argv)
    postgres_dsn = _flag_or_env(parser, args.postgres_dsn, POSTGRES_DSN_VAR, _postgres_dsn)
    downstream = _flag_or_env(parser, args.downstream, DOWNSTREAM_VAR, _downstream)
    # Checked even when --cancel-methods overrides it: demo_backend.protocol reads the variable at
    # import, and a bad value must surface here as one line rather than as a traceback later.
    try:
        env_cancel_methods = cancel_methods_from_env()
        env_trust = trust_decision_header_from_env()
    except ValueError as exc:
        parser.error(str(exc))
    return BackendOptions(
        host=args.host,
        port=args.port,
        uds=args.uds,
        http=cast("HttpImplementation", args.http),
        cancel_methods=(env_cancel_methods if args.cancel_methods is None else args.cancel_methods),
        trust_decision_header=(
            env_trust if args.trust_decision_header is None else args.trust_decision_header
        ),
        limit_concurrency=args.limit_concurrency,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        log_format=cast("LogFormat", args.log_format),
        log_level=args.log_level,
        work=WorkSettings(
            postgres_dsn=postgres_dsn,
            postgres_pool_size=args.postgres_pool_size,
            downstream=downstream,
        ),
    )


def run(options: BackendOptions) -> None:
    # Imported only after parse_options: demo_backend.protocol reads HANGUP_CANCEL_METHODS at
    # import time (so that plain `uvicorn --http demo_backend.protocol:...` is configured by the
    # environment), and a bad value must reach the operator as one line, not an import traceback.
    from demo_backend.protocol import cancelling_protocol  # noqa: PLC0415

    configure_logging(options.log_format, options.log_level)
    config = uvicorn.Config(
        create_app(options.work),
        host=options.host,
        port=options.port,
        uds=options.uds,
        http=cancelling_protocol(
            options.http, options.cancel_methods, options.trust_decision_header
        ),
        limit_concurrency=options.limit_concurrency,
        timeout_graceful_shutdown=options.timeout_graceful_shutdown,
        # Our configure_logging owns the handlers; uvicorn's access line would duplicate the
        # app's own events in another format. Order matters: configure_logging first, because
        # access_log=False is what detaches uvicorn.access from the root handler.
        log_config=None,
        access_log=False,
        log_level=options.log_level,
    )
    server = BackendServer(
        config,
        http=options.http,
        cancel_methods=CancelPolicy.from_names(options.cancel_methods).describe(),
        trust_decision_header=options.trust_decision_header,
    )
    server.run()


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    run(options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
