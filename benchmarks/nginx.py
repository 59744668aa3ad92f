"""nginx twice: the fixed origin (static files, and a fixed answer to the POST case), and the
reference reverse proxy.

Both run as children with their own prefix and config in the benchmark's temp dir
(``-p DIR -c FILE -e FILE -g 'daemon off;'``), so no global nginx config is read or changed.
One worker each, as in the issue's reference numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks import post
from benchmarks.processes import LOOPBACK

BODY_SIZES = {"1k": 1024, "100k": 100 * 1024}
"""The static files the origin serves, by path: ``/1k`` and ``/100k``."""

WORKER_CONNECTIONS = 10000
"""Room for 5,000 held client connections plus upstream ones; within the open-file limit the
driver raises for its children (a worker that dropped root cannot raise its own)."""


@dataclass(frozen=True)
class Route:
    """One ``server`` of the reference proxy: ``listen`` forwards everything to ``upstream``."""

    listen: int
    upstream: int


def write_site(prefix: Path) -> Path:
    """The origin's document root with one file per body size (world-readable: nginx's workers
    drop root privileges)."""
    www = prefix / "www"
    www.mkdir(mode=0o755)
    for name, size in BODY_SIZES.items():
        path = www / name
        path.write_bytes(b"x" * size)
        path.chmod(0o644)
    return www


def origin_config(prefix: Path, port: int, www: Path) -> str:
    return _config(
        prefix,
        "origin",
        f"""
    access_log off;
    sendfile on;
    # No open/fstat/close per request: the origin must never be what a proxy waits for.
    open_file_cache max=16;
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        root {www};
        # The API-call case: static files answer POST with 405. `return` reads and discards
        # the request body first (ngx_http_send_response), so the connection stays open.
        location = /{post.PATH} {{
            default_type application/octet-stream;
            return 200 "{"x" * post.ANSWER_SIZE}";
        }}
    }}""",
    )


def proxy_config(prefix: Path, routes: list[Route]) -> str:
    """A plain reverse proxy: HTTP/1.1 upstream with a keep-alive pool, default buffering, and an
    access log line per request written to /dev/null (as hangup's canonical line is)."""
    servers = "".join(
        f"""
    upstream upstream_{route.listen} {{
        server {LOOPBACK}:{route.upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {LOOPBACK}:{route.listen} backlog=4096;
        location / {{
            proxy_pass http://upstream_{route.listen};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
        for route in routes
    )
    return _config(prefix, "proxy", "\n    access_log /dev/null;" + servers)


def _config(prefix: Path, name: str, body: str) -> str:
    temp = prefix / "tmp"
    return f"""# Written by benchmarks/nginx.py for one run; deleted with its temp dir.
worker_processes 1;
pid {prefix}/{name}.pid;
error_log {prefix}/{name}-error.log warn;
events {{
    worker_connections {WORKER_CONNECTIONS};
}}
http {{
    default_type application/octet-stream;
    client_body_temp_path {temp}/{name}-client-body;
    proxy_temp_path {temp}/{name}-proxy;
    fastcgi_temp_path {temp}/{name}-fastcgi;
    uwsgi_temp_path {temp}/{name}-uwsgi;
    scgi_temp_path {temp}/{name}-scgi;
    # Neither side closes a benchmark connection every 1,000 requests (nginx's default); hangup
    # never does either.
    keepalive_requests 1000000;
    keepalive_timeout 75s;{body}
}}
"""


def complaints(prefix: Path) -> list[str]:
    """Lines at warn level or above from every nginx error log of this run."""
    found = []
    for log in sorted(prefix.glob("*-error.log")):
        found += [f"{log.name}: {line}" for line in log.read_text(errors="replace").splitlines()]
    return found


def nginx_argv(nginx: Path, prefix: Path, name: str, config: str) -> list[str]:
    """Write ``config`` and return the command line that runs it in the foreground."""
    (prefix / "tmp").mkdir(mode=0o755, exist_ok=True)
    path = prefix / f"{name}.conf"
    path.write_text(config)
    return [
        str(nginx),
        "-p",
        str(prefix),
        "-c",
        str(path),
        "-e",
        str(prefix / f"{name}-error.log"),
        "-g",
        "daemon off;",
    ]
