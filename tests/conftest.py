from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from proxy.config import HostPort, ProxyConfig, parse_upstream
from proxy.logs import configure_logging
from proxy.server import RunningProxy, running_proxy
from tests.raw_upstream import RawUpstream
from tests.support import LOOPBACK

ProxyFactory = Callable[..., AbstractAsyncContextManager[RunningProxy]]


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
