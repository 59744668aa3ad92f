from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import uvloop

from proxy.config import HostPort, ProxyConfig, parse_upstream
from proxy.logs import configure_logging
from proxy.server import RunningProxy, running_proxy
from tests.raw_upstream import RawUpstream
from tests.support import LOOPBACK

ProxyFactory = Callable[..., AbstractAsyncContextManager[RunningProxy]]

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

    Production runs uvloop (``proxy.server.run``), asyncio's loop is the reference, and the two
    differ where it matters here: transports, write errors, the order of callbacks in a turn. Tests
    that start the console scripts run uvloop already; the rest do not depend on the loop.
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
    """Start the proxy exactly as the entry point does (``proxy.server.running_proxy``)."""

    @asynccontextmanager
    async def start(upstream_url: str, **overrides: Any) -> AsyncIterator[RunningProxy]:
        async with running_proxy(proxy_config(upstream_url, **overrides)) as running:
            yield running

    return start
