"""uvicorn's ``Server`` with the two changes a well-behaved child process needs.

- It logs one ``backend_listening`` line with the port it actually bound, so ``--port 0`` is
  usable by whoever started it (the walkthrough, the tests, an orchestrator).
- SIGTERM and SIGINT end in exit status 0 after the graceful shutdown. uvicorn re-raises the
  captured signal once it has shut down, so that the default action kills the process with that
  signal (-15); a supervisor would then report a clean, requested stop as a crash.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Generator
from typing import Any

import structlog
import uvicorn
from uvicorn.server import HANDLED_SIGNALS


def bound_port(server: uvicorn.Server) -> int:
    """The TCP port the started server listens on (the real one when it was asked for port 0)."""
    for listener in server.servers:
        for sock in listener.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
    raise RuntimeError("the server is not listening on a TCP socket")


class BackendServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, **listening_fields: Any) -> None:
        super().__init__(config)
        self._listening_fields = listening_fields

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            where: dict[str, Any] = (
                {"uds": self.config.uds}
                if self.config.uds
                else {"host": self.config.host, "port": bound_port(self)}
            )
            structlog.get_logger().info("backend_listening", **where, **self._listening_fields)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The same capture as uvicorn's, without re-raising the signal at the end (see above).
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)
