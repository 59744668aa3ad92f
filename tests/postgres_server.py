"""A real, throw-away PostgreSQL server for the tests, on 127.0.0.1.

``running_postgres`` runs ``initdb`` into a fresh temporary directory, starts ``postgres`` on a
free loopback port with its unix socket in that directory, waits (bounded) for the server's own
"ready to accept connections" line and then for one asyncpg connection, yields the DSN, stops the
server by PID and removes the directory. It is synchronous on purpose: the fixture that uses it
is session-scoped, and every test has an event loop of its own.

PostgreSQL refuses to run as root. As root (CI containers) both programs run as the ``postgres``
account, which then owns the directory. They are started with ``subprocess``'s ``user=`` and
``group=`` rather than under ``runuser -u postgres --``: runuser stays on as the parent, so the
PID held would be runuser's, and on SIGTERM it prints "Session terminated, killing shell...",
waits 2 s and SIGKILLs the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import asyncpg

from tests.support import LOOPBACK

INSTALL_ROOT = Path("/usr/lib/postgresql")  # Debian's layout: one <major>/bin per version
INSTALL_HINT = f"no PostgreSQL server in {INSTALL_ROOT}/*/bin: apt-get install postgresql"
SUPERUSER = "postgres"
DATABASE = "postgres"
OWNER = "postgres"  # the account that runs the server when the tests run as root
READY_LINE = "database system is ready to accept connections"
START_WAIT = 30.0  # the bound on initdb, and on the server's start
STOP_WAIT = 10.0


class PostgresMissing(Exception):  # noqa: N818 - names the state, like FileNotFoundError
    """What the server needs to run here is not installed."""


@dataclass(frozen=True)
class Installation:
    """Where the server binaries are, and whom they run as."""

    bin_dir: Path
    owner: pwd.struct_passwd | None
    """The account to run them as when we are root; None runs them as ourselves."""

    def run_as(self) -> dict[str, Any]:
        """``subprocess`` keywords that start a program as ``owner``."""
        if self.owner is None:
            return {}
        return {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}


def find_installation() -> Installation:
    """The newest installed major version (not on PATH); else PostgresMissing."""
    bin_dirs = [
        initdb.parent
        for initdb in INSTALL_ROOT.glob("*/bin/initdb")
        if (initdb.parent / "postgres").is_file() and initdb.parent.parent.name.isdigit()
    ]
    if not bin_dirs:
        raise PostgresMissing(INSTALL_HINT)
    bin_dir = max(bin_dirs, key=lambda path: int(path.parent.name))
    if os.geteuid() != 0:
        return Installation(bin_dir, None)
    try:
        owner = pwd.getpwnam(OWNER)
    except KeyError:
        raise PostgresMissing(
            f"PostgreSQL does not run as root and there is no {OWNER!r} user: {INSTALL_HINT}"
        ) from None
    return Installation(bin_dir, owner)


@contextlib.contextmanager
def running_postgres(installation: Installation) -> Iterator[str]:
    """A fresh server for the length of the block; yields its superuser DSN over TCP."""
    base = Path(tempfile.mkdtemp(prefix="hangup-postgres-"))
    try:
        if installation.owner is not None:
            os.chown(base, installation.owner.pw_uid, installation.owner.pw_gid)
        _initdb(installation, base / "data")
        port = _free_port()
        with subprocess.Popen(
            [
                str(installation.bin_dir / "postgres"),
                *("-D", str(base / "data"), "-p", str(port), "-k", str(base)),
                *("-c", f"listen_addresses={LOOPBACK}", "-c", "fsync=off"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=base,
            **installation.run_as(),
        ) as server:
            log = ServerLog(server.stdout)
            try:
                if not log.wait_ready(START_WAIT):
                    raise RuntimeError("postgres did not start:\n" + log.text())
                dsn = f"postgresql://{SUPERUSER}@{LOOPBACK}:{port}/{DATABASE}"
                with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
                    runner.run(_select_one(dsn))
                yield dsn
            finally:
                _stop(server)
                log.join()
    finally:
        shutil.rmtree(base)


class ServerLog:
    """The server's output, read on a thread so that a bounded wait can wait for one line.

    Read to the end, not only up to the ready line: a pipe nobody empties would block the server.
    """

    def __init__(self, stream: IO[str] | None) -> None:
        self.lines: list[str] = []
        self.ready = False
        self._settled = threading.Event()  # the ready line came, or the output ended
        self._reader = threading.Thread(
            target=self._read, args=(stream,), name="postgres-log", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            self.lines.append(line.rstrip("\n"))
            if READY_LINE in line:
                self.ready = True
                self._settled.set()
        self._settled.set()

    def wait_ready(self, timeout: float) -> bool:
        self._settled.wait(timeout)
        return self.ready

    def join(self) -> None:
        self._reader.join(STOP_WAIT)

    def text(self) -> str:
        return "\n".join(self.lines)


def _initdb(installation: Installation, data: Path) -> None:
    finished = subprocess.run(
        [
            str(installation.bin_dir / "initdb"),
            *("-D", str(data), "-A", "trust", "-U", SUPERUSER),
            *("-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_WAIT,
        check=False,
        cwd=data.parent,
        **installation.run_as(),
    )
    if finished.returncode != 0:
        raise RuntimeError(
            f"initdb failed ({finished.returncode}):\n{finished.stdout}{finished.stderr}"
        )


def _free_port() -> int:
    # The server binds with SO_REUSEADDR, and nothing was ever connected here: the port is free.
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


async def _select_one(dsn: str) -> None:
    async with asyncio.timeout(START_WAIT):
        connection = await asyncpg.connect(dsn)
        try:
            if await connection.fetchval("SELECT 1") != 1:
                raise RuntimeError(f"postgres at {dsn} did not answer SELECT 1")
        finally:
            await connection.close()


def _stop(server: subprocess.Popen[str]) -> None:
    """By PID. SIGINT is PostgreSQL's fast shutdown (pg_ctl's default): SIGTERM's smart shutdown
    waits for every client to leave, so one leaked connection would turn it into the SIGKILL."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
    try:
        server.wait(STOP_WAIT)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(STOP_WAIT)
