"""The proxy's configuration: one frozen dataclass, every field documented with its default.

``proxy.cli`` builds it from flags and ``HANGUP_*`` environment variables; nothing else reads the
environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from proxy.edge.gate import Limits
from proxy.logs.configure import LogFormat
from proxy.policy.methods import CancelPolicy
from proxy.policy.routes import RoutePolicy, Rule
from proxy.upstream.address import Upstream
from proxy.wire.address import HostPort


def parse_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return seconds


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}, got {text!r}")


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """Bytes, with an optional binary suffix: ``65536``, ``64k``, ``10m``, ``1g`` (any case)."""
    stripped = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = (stripped[:-1], stripped[-1]) if stripped[-1:] in "kmg" else (stripped, "")
    if not (number.isascii() and number.isdigit()) or int(number) < 1:
        raise ValueError(f"expected a size in bytes such as 65536, 64k or 10m, got {text!r}")
    return int(number) * _SIZE_UNITS[unit]


def format_size(size: int) -> str:
    """``parse_size``'s inverse, as an operator writes it: ``65536`` -> ``64k``."""
    for unit, factor in reversed(_SIZE_UNITS.items()):
        if factor > 1 and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_optional_size(text: str) -> int | None:
    """A size as in ``parse_size``, or ``off`` for no limit."""
    return None if text.strip().lower() in ("off", "none", "0") else parse_size(text)


def format_optional_size(size: int | None) -> str:
    return "off" if size is None else format_size(size)


def parse_buffer_size(text: str) -> int:
    """A size as in ``parse_size``, or ``0``/``off`` for none (``proxy_request_buffering off``)."""
    return 0 if text.strip().lower() in ("off", "0") else parse_size(text)


def format_buffer_size(size: int) -> str:
    return "off" if size == 0 else format_size(size)


def parse_grace(text: str) -> float:
    """Seconds, 0 allowed (no grace)."""
    return 0.0 if text.strip() in ("0", "0.0") else parse_seconds(text)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parse_header_name(text: str) -> str:
    """A header field name (RFC 9110 §5.1: a token)."""
    if not _TOKEN.fullmatch(text.strip()):
        raise ValueError(f"expected a header name such as Request-Timeout, got {text!r}")
    return text.strip()


def parse_count(text: str) -> int:
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()) or int(stripped) < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


MAX_WORKERS = 256
"""A bound on ``--workers``, so that a typo cannot start thousands of processes."""


def parse_workers(text: str) -> int:
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()) or not 1 <= int(stripped) <= MAX_WORKERS:
        raise ValueError(f"expected a whole number from 1 to {MAX_WORKERS}, got {text!r}")
    return int(stripped)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Everything the proxy needs to run. Defaults are the ones a sidecar wants, and the only
    copy of them: a flag given neither on the command line nor in the environment keeps the field's
    default, which ``hangup-proxy --help`` shows (``proxy.cli``)."""

    upstream: Upstream
    """The backend every request is forwarded to. Required."""

    listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 8080))
    """Where clients connect. Default 127.0.0.1:8080; port 0 picks a free port (logged)."""

    cancel_policy: CancelPolicy = field(default_factory=CancelPolicy)
    """Methods whose upstream exchange is closed when the client hangs up. Default the safe
    methods GET, HEAD, OPTIONS, TRACE; others are carried to the end and their answer discarded."""

    route_rules: tuple[Rule, ...] = ()
    """Per-route rules from --cancel-route, tried in order before the method list."""

    policy_rules: tuple[Rule, ...] = ()
    """Rules from --policy-file, tried after ``route_rules``."""

    cancel_grace: float = 0.0
    """Seconds a hung-up request of a cancelled method may still finish before its upstream
    connection is closed; 0 closes at once. Applies to the method list, not to route rules."""

    deadline_header: str | None = None
    """A request header in which a trusted client gives the seconds it will wait (capped by
    ``upstream_timeout``); past them 504 and the upstream connection is closed. Off when None."""

    upstream_timeout: float = 60.0
    """Seconds to wait for the upstream: for its response headers once the request is sent,
    then between two reads of its body. Past it: 504 (or a cut connection once streaming)."""

    connect_timeout: float = 5.0
    """Seconds to wait for a TCP connection to the upstream. Past it, or on refusal: 502."""

    upstream_keepalive_timeout: float = 4.0
    """Seconds an idle pooled upstream connection is kept. Must stay below the backend's own idle
    timeout (uvicorn's default is 5 s), or a request can be sent on a socket the backend is
    closing at that very moment."""

    upstream_max_connections: int = 1024
    """Most upstream requests and open WebSocket tunnels at once; one more gets 503 at once."""

    client_keepalive_timeout: float = 75.0
    """Seconds an idle client keep-alive connection is kept open (nginx and aiohttp use 75)."""

    drain_timeout: float = 25.0
    """On SIGTERM/SIGINT: seconds in-flight requests (and writes carried to the end) are given to
    finish before they are cut. Just under the 30 s grace period Kubernetes and compose setups
    usually give, so the process exits 0 on its own before it is killed."""

    header_timeout: float = 15.0
    """Seconds a client has to send a whole request header block, from connecting or from the
    first byte of a later request on the same connection; past it, 408 and close (slowloris)."""

    body_timeout: float = 60.0
    """Seconds the whole request body has, from the end of its head; past it, 408 and close (and
    the upstream connection, if one was taken, is closed). A total, like HAProxy's ``timeout
    http-request`` with ``http-buffer-request`` and Envoy's ``request_timeout``, so a body
    trickled a byte at a time cannot hold an upstream slot; nginx's ``client_body_timeout`` bounds
    only each read. Raise it for large uploads over slow links."""

    request_buffer_size: int = 65536
    """A request body up to this many bytes is read whole before the upstream is contacted, and
    sent with its head in one write (nginx ``proxy_request_buffering``, HAProxy
    ``http-buffer-request``); a larger one is streamed. 64 KiB holds the usual API body (JSON,
    a prompt with context) and is what the one-write path was measured with (benchmarks/); it
    lives in memory, so the most it can hold is this times ``max_client_connections``. 0 (or
    ``off``) streams every body as it arrives, which gives slow uploaders an upstream slot each."""

    send_timeout: float = 60.0
    """Seconds a client may accept no byte of what it is sent; past it the client connection is
    cut and its upstream connection closed, which frees the slot (nginx ``send_timeout`` 60 s)."""

    max_client_connections: int = 10000
    """Most client connections at once; past it a new connection is answered 503 and closed."""

    max_uri_size: int = 8192
    """Longest request target, in bytes (414 past it)."""

    max_header_field_size: int = 16384
    """Longest single header field name or value, in bytes (431 past it)."""

    max_header_block_size: int = 65536
    """Most bytes in all request header fields together (431 past it)."""

    max_headers: int = 100
    """Most request header fields (431 past it)."""

    max_body_size: int | None = None
    """Largest request body, in bytes (413 past it, even mid-stream); None means no limit."""

    workers: int = 1
    """Processes serving client traffic. 1 (the default): this process serves, exactly as without
    the option. N > 1: this process becomes a supervisor of N worker processes that each bind
    ``listen`` with SO_REUSEPORT, and it alone serves the admin listener
    (``proxy.workers.supervisor``)."""

    admin: HostPort | None = None
    """Where the admin listener serves /healthz, /livez, /readyz and /metrics, separately from
    client traffic. Default None: no admin listener. Port 0 picks a free port (logged)."""

    ready_check_upstream: bool = False
    """When True, /readyz also answers 503 while the upstream refuses TCP connections. Never a
    start-up condition: in a Kubernetes native sidecar the app starts only after the proxy."""

    log_format: LogFormat = "json"
    """``json`` (one object per line, for machines) or ``console`` (for people)."""

    log_level: str = "info"
    """Lowest level written: debug, info, warning, error."""

    @property
    def route_policy(self) -> RoutePolicy:
        return RoutePolicy(
            self.route_rules + self.policy_rules, self.cancel_policy, self.cancel_grace
        )

    @property
    def policy_fields(self) -> dict[str, object]:
        """The policy as loaded, for the start-up line: what a hang-up will do, in one place.

        The rules are in the order they are tried, by the names request lines and metrics give them.
        """
        return {
            "cancel_routes": {rule.name: rule.describe() for rule in self.route_policy.rules},
            "cancel_methods": self.cancel_policy.describe(),
            "cancel_grace": self.cancel_grace,
            "deadline_header": self.deadline_header,
        }

    @property
    def limits(self) -> Limits:
        return Limits(
            max_uri_size=self.max_uri_size,
            max_header_field_size=self.max_header_field_size,
            max_header_block_size=self.max_header_block_size,
            max_headers=self.max_headers,
            max_body_size=self.max_body_size,
        )
