"""The backend half (issue 16): what hangup's cancelling protocol costs a uvicorn app a request.

FastAPI's hello world (``benchmarks.hello_app``) runs on four real uvicorn processes: plain
``--http httptools`` and ``--http demo_backend.protocol:CancellingHttpToolsProtocol``, and the
same pair for h11. Each is one process (no ``--workers``), ``--log-level warning
--no-access-log``, uvicorn's defaults otherwise (uvloop), pinned to the proxy core. The four are
started together and measured one after another at ``GET /``, with the wrk settings of the
proxies' runs (``-t1 -c64``, the plan's length, wrk on the load core), in an order that rotates
each round. Target: with the protocol, at least 0.97 times plain uvicorn's req/s.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.plan import ROOT
from benchmarks.processes import LOOPBACK, Fleet

UVICORN_SCRIPT = Path(sys.executable).with_name("uvicorn")
"""uvicorn's console script next to this interpreter (the project's venv)."""
APP = "benchmarks.hello_app:app"
PATH = "/"


@dataclass(frozen=True)
class Backend:
    http: str
    """uvicorn's HTTP implementation underneath: ``httptools`` or ``h11``."""
    protocol: str
    """What ``--http`` is given: the implementation's name, or hangup's subclass of it."""

    @property
    def is_cancelling(self) -> bool:
        return self.protocol != self.http

    @property
    def name(self) -> str:
        """How the table names it: uvicorn's name, or the class's."""
        return self.protocol.rpartition(":")[2]


IMPLEMENTATIONS = ("httptools", "h11")
BACKENDS = {
    "uvicorn-httptools": Backend("httptools", "httptools"),
    "cancelling-httptools": Backend(
        "httptools", "demo_backend.protocol:CancellingHttpToolsProtocol"
    ),
    "uvicorn-h11": Backend("h11", "h11"),
    "cancelling-h11": Backend("h11", "demo_backend.protocol:CancellingH11Protocol"),
}
"""Every server measured, by key."""


def pair(http: str) -> tuple[str, str]:
    """The keys of plain uvicorn and of the cancelling protocol on ``http``."""
    plain = next(k for k, b in BACKENDS.items() if b.http == http and not b.is_cancelling)
    cancelling = next(k for k, b in BACKENDS.items() if b.http == http and b.is_cancelling)
    return plain, cancelling


def uvicorn_argv(backend: Backend, port: int) -> list[str]:
    """The command line of one backend on ``port``; run it from the checkout (``APP``)."""
    return [
        str(UVICORN_SCRIPT),
        "--http",
        backend.protocol,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        APP,
    ]


def stderr_name(key: str) -> str:
    """The file in the run's directory that takes the backend's stderr."""
    return f"backend-{key}.stderr"


def spawn(
    fleet: Fleet, key: str, port: int, *, core: int | None, prefix: Path
) -> subprocess.Popen[bytes]:
    """Start one backend on ``port``, from the checkout (where ``APP`` imports from), its
    stderr to ``prefix / stderr_name(key)``; the caller waits for it to listen."""
    argv = uvicorn_argv(BACKENDS[key], port)
    with (prefix / stderr_name(key)).open("wb") as stderr:
        return fleet.spawn(f"uvicorn {key} :{port}", argv, core=core, stderr=stderr, cwd=ROOT)
