from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import uvloop

from proxy.logs.configure import configure_logging
from proxy.serving.server import RunningProxy, running_proxy
from proxy.settings.config import ProxyConfig
from proxy.upstream.address import parse_upstream
from proxy.wire.address import HostPort
from tests.postgres_server import PostgresMissing, find_installation, running_postgres
from tests.raw_upstream import RawUpstream
from tests.support import LOOPBACK

ProxyFactory = Callable[..., AbstractAsyncContextManager[RunningProxy]]

REQUIRE_POSTGRES_VAR = "HANGUP_REQUIRE_POSTGRES"  # .ci/run sets it: a run without them fails
_POSTGRES_TEST_PASSED = pytest.StashKey[bool]()
_POSTGRES_TEST_SKIPPED = pytest.StashKey[str]()  # the first one's node id

_ASYNCIO_ONLY: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop
}
_BOTH_LOOPS: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """A test that runs the proxy in its own loop (``start_proxy``) runs on both loops.

    Production runs uvloop (``proxy.serving.server.run``), asyncio's loop is the reference, and the
    two differ where it matters here: transports, write errors, the order of callbacks in a turn.
    Tests that start the console scripts run uvloop already; the rest do not depend on the loop.
    """
    return _BOTH_LOOPS if "start_proxy" in getattr(item, "fixturenames", ()) else _ASYNCIO_ONLY


@pytest.fixture(autouse=True, scope="session")
def _structlog_configured() -> None:
    configure_logging("json", "debug")


@pytest.fixture
async def upstream() -> AsyncIterator[RawUpstream]:
    server = RawUpstream()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test is listening on, so the proxy cannot bind it."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def proxy_config() -> Callable[..., ProxyConfig]:
    def make(upstream_url: str, **overrides: Any) -> ProxyConfig:
        base = ProxyConfig(
            upstream=parse_upstream(upstream_url),
            listen=HostPort(LOOPBACK, 0),
            drain_timeout=5.0,
        )
        return dataclasses.replace(base, **overrides)

    return make


@pytest.fixture
def start_proxy(proxy_config: Callable[..., ProxyConfig]) -> ProxyFactory:
    """Start the proxy exactly as the entry point does (``proxy.serving.server.running_proxy``)."""

    @asynccontextmanager
    async def start(upstream_url: str, **overrides: Any) -> AsyncIterator[RunningProxy]:
        async with running_proxy(proxy_config(upstream_url, **overrides)) as running:
            yield running

    return start


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A real PostgreSQL server for the whole session (``tests.postgres_server``): its DSN."""
    try:
        installation = find_installation()
    except PostgresMissing as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    with running_postgres(installation) as dsn:
        yield dsn


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if "postgres_dsn" not in getattr(item, "fixturenames", ()):
        return report
    if report.when == "call" and report.passed:
        item.config.stash[_POSTGRES_TEST_PASSED] = True
    if report.skipped:
        item.config.stash.setdefault(_POSTGRES_TEST_SKIPPED, item.nodeid)
    return report


def _postgres_requirement_unmet(config: pytest.Config) -> str | None:
    """Why this run must fail for want of a passed PostgreSQL test; None when it need not."""
    if os.environ.get(REQUIRE_POSTGRES_VAR) != "1":
        return None
    skipped = config.stash.get(_POSTGRES_TEST_SKIPPED, None)
    if skipped is not None:
        return f"{REQUIRE_POSTGRES_VAR}=1 but a PostgreSQL test was skipped: {skipped}"
    if not config.stash.get(_POSTGRES_TEST_PASSED, False):
        return f"{REQUIRE_POSTGRES_VAR}=1 but no test that uses PostgreSQL (postgres_dsn) passed"
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``HANGUP_REQUIRE_POSTGRES=1``, a run in which no PostgreSQL test passed fails."""
    if _postgres_requirement_unmet(session.config) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reason = _postgres_requirement_unmet(terminalreporter.config)
    if reason is not None:
        terminalreporter.write_line(reason, red=True, bold=True)
