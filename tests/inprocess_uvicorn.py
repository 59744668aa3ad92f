"""A real uvicorn server inside the test's event loop, on an ephemeral loopback port.

The listening socket is bound before uvicorn starts, so the port is known at once and a client
that connects early waits in the backlog: nothing to poll for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from tests.support import LOOPBACK, WAIT


@dataclass
class InProcessServer:
    server: uvicorn.Server
    port: int
    task: asyncio.Task[None]

    async def shut_down(self) -> None:
        """A graceful shutdown, as on SIGTERM; returns when ``serve`` has returned (bounded)."""
        self.server.should_exit = True
        async with asyncio.timeout(WAIT):
            await asyncio.shield(self.task)


@asynccontextmanager
async def running_uvicorn(app: Any, **config: Any) -> AsyncIterator[InProcessServer]:
    """Serve ``app`` with ``uvicorn.Config(app, **config)`` until the block ends.

    Defaults: no lifespan, and ``log_config=None`` so uvicorn leaves the logging set-up alone.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    settings: dict[str, Any] = {"lifespan": "off", "log_config": None, **config}
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield InProcessServer(server, port, task)
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(WAIT):
                await asyncio.shield(task)
        except TimeoutError:
            # A test left a request hanging: don't hang the suite with it, and don't leave the
            # serve task pending (asyncio would warn, and warnings are errors here).
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        finally:
            listener.close()
