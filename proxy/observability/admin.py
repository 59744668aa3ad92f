"""The admin listener: health, readiness and metrics, on a port of its own.

It is a separate aiohttp runner and site from client traffic, so probes and scrapes never queue
behind client requests, never appear in the canonical request log, and keep answering while the
client listener drains.

- ``GET /healthz`` (alias ``/livez``): 200 whenever the event loop answers. It never touches the
  backend: a liveness probe that followed the backend would restart a healthy proxy.
- ``GET /readyz``: 200 while the proxy accepts traffic, 503 from the first moment of a drain.
  With ``--ready-check-upstream`` also 503 while the upstream refuses TCP connections; that is
  checked per probe, never at start-up (cancellation-facts §7: in a native sidecar the backend
  starts only after the proxy has started, so a start-up dependency would deadlock the pod).
- ``GET /metrics``: the proxy's own registry in the Prometheus text format; with ``--workers N``
  the supervisor's registry, which sums every worker's (``proxy.workers.supervisor``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from proxy.upstream.address import Upstream
from proxy.wire.address import HostPort

# A probe's own budget for the TCP connect to the upstream; kubelet's default probe timeout is 1 s.
UPSTREAM_PROBE_TIMEOUT = 0.5


@dataclass
class Readiness:
    """Whether the proxy should be sent traffic; shared by the server (which drains) and /readyz."""

    upstream: Upstream
    check_upstream: bool = False
    draining: bool = False

    async def problem(self) -> str | None:
        """Why the proxy is not ready, or None when it is."""
        if self.draining:
            return "draining"
        if self.check_upstream and not await self._upstream_accepts():
            return "upstream refuses connections"
        return None

    async def _upstream_accepts(self) -> bool:
        try:
            async with asyncio.timeout(UPSTREAM_PROBE_TIMEOUT):
                if self.upstream.unix_path is not None:
                    _, writer = await asyncio.open_unix_connection(self.upstream.unix_path)
                else:
                    _, writer = await asyncio.open_connection(
                        self.upstream.host, self.upstream.port
                    )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


READINESS = web.AppKey("readiness", Readiness)
METRICS = web.AppKey("metrics", CollectorRegistry)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    problem = await request.app[READINESS].problem()
    if problem is None:
        return web.Response(text="ready\n")
    return web.Response(status=503, text=f"not ready: {problem}\n")


async def _metrics(request: web.Request) -> web.Response:
    # The format the scraper asks for: OpenMetrics when it says so, else the classic text format
    # (version 0.0.4), which every Prometheus reads.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[METRICS])
    return web.Response(body=body, headers={"Content-Type": content_type})


def build_admin_app(readiness: Readiness, registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    app[READINESS] = readiness
    app[METRICS] = registry
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/livez", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def start_admin(
    address: HostPort, readiness: Readiness, registry: CollectorRegistry
) -> tuple[web.AppRunner, HostPort]:
    """Start the admin listener; returns its runner (to clean up) and the address it is bound to."""
    # No access log: a probe every few seconds would drown the canonical request lines.
    runner = web.AppRunner(build_admin_app(readiness, registry), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, address.host, address.port).start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    return runner, HostPort(host, port)
