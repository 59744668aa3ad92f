"""The proxy's process: the client-facing server, the upstream session, and their lifetimes.

``build_server`` is the one place the aiohttp server is configured, so that the entry point and
the tests run the same thing. It must turn ``handler_cancellation`` on: aiohttp's own test server
always does (cancellation-facts §3), so only a test of *this* function proves production does.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from aiohttp import ClientSession, web

from proxy.config import HostPort, ProxyConfig
from proxy.forward import Forwarder
from proxy.upstream import open_upstream_session

log = structlog.get_logger("hangup.proxy")


def build_server(forwarder: Forwarder, config: ProxyConfig) -> web.Server:
    """aiohttp's low-level server: no router or middleware chain, one handler for everything."""
    return web.Server(
        forwarder.handle,
        # The heart of hangup: cancel the handler when the client's connection is lost.
        handler_cancellation=True,
        # Bodies pass through as sent: never decompress a client's gzip upload.
        auto_decompress=False,
        # The canonical line in proxy.exchange replaces aiohttp's access log (which also never
        # logs a cancelled handler).
        access_log=None,
        keepalive_timeout=config.client_keepalive_timeout,
    )


@dataclass
class RunningProxy:
    """A started proxy: where it listens, and how to stop it."""

    runner: web.ServerRunner
    session: ClientSession
    forwarder: Forwarder
    address: HostPort

    async def stop(self, drain_seconds: float) -> None:
        """Stop accepting, give in-flight and detached exchanges ``drain_seconds``, then close."""
        server = self.runner.server
        if server is not None:
            # Stop listening first, so no new connection is accepted while we drain.
            for site in list(self.runner.sites):
                await site.stop()
        detached = set(self.forwarder.detached)
        if detached:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_seconds):
                    await asyncio.wait(detached)
        await self.runner.cleanup()
        await self.session.close()


async def start_proxy(config: ProxyConfig) -> RunningProxy:
    session = open_upstream_session(config)
    forwarder = Forwarder(config, session)
    runner = web.ServerRunner(
        build_server(forwarder, config), shutdown_timeout=config.shutdown_timeout
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.listen.host, config.listen.port)
        await site.start()
    except BaseException:
        # Typically the address is taken: undo what was opened so nothing is reported unclosed.
        await runner.cleanup()
        await session.close()
        raise
    host, port = runner.addresses[0][:2]
    return RunningProxy(runner, session, forwarder, HostPort(host, port))


@contextlib.asynccontextmanager
async def running_proxy(config: ProxyConfig) -> AsyncIterator[RunningProxy]:
    proxy = await start_proxy(config)
    try:
        yield proxy
    finally:
        await proxy.stop(config.shutdown_timeout)


async def serve(config: ProxyConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully; a second signal stops at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stop, signum)
    async with running_proxy(config) as proxy:
        log.info(
            "proxy_listening",
            host=proxy.address.host,
            port=proxy.address.port,
            upstream=config.upstream.origin,
            cancel_methods=config.cancel_policy.describe(),
        )
        await stop.wait()
        log.info("proxy_stopping", timeout=config.shutdown_timeout)
    log.info("proxy_stopped")


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    if stop.is_set():
        log.warning("proxy_exit_now", signal=signal.Signals(signum).name)
        raise SystemExit(1)
    log.info("signal_received", signal=signal.Signals(signum).name)
    stop.set()


def run(config: ProxyConfig) -> None:
    """Blocking entry point: uvloop when installed (it is a dependency on POSIX)."""
    try:
        import uvloop  # noqa: PLC0415 - optional at run time on platforms without it
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
