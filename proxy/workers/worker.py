"""One worker of ``--workers N``: the ordinary proxy, told where to listen by its supervisor.

The contract with ``proxy.workers.supervisor``, which starts each worker as ``python -P -c`` running
what the console script runs (``proxy.workers.supervisor.WORKER_CODE``), with the supervisor's own
flags and environment plus ``HANGUP_WORKER_ASSIGNMENT`` (``WorkerAssignment``):

- The worker parses the same flags and variables, so it runs the supervisor's configuration,
  except that it listens on the address the supervisor resolved (port 0 becomes the one port all
  workers share), with SO_REUSEPORT, and opens no admin listener (the supervisor's serves all).
- ``channel_fd`` is the worker's end of a socket pair. The worker writes ``LISTENING`` on it once
  its listener is up. The supervisor never writes; end of file means the supervisor is gone
  (even SIGKILLed), and the worker then drains exactly as on SIGTERM, so no orphan keeps serving.
- Every log line of the worker carries its ``pid`` and ``worker`` slot, bound before its event
  loop starts so that every task, the canonical request line's included, inherits them.
- Metrics go to the files of the supervisor's ``PROMETHEUS_MULTIPROC_DIR``, which prometheus-client
  reads from the environment when it is imported: it is set before this process starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from proxy.serving.server import RunningProxy, run
from proxy.settings.config import ProxyConfig
from proxy.wire.address import HostPort, parse_host_port

ASSIGNMENT_ENV = "HANGUP_WORKER_ASSIGNMENT"
"""Set by the supervisor only: its presence makes ``hangup-proxy`` run as a worker."""

LISTENING = b"listening\n"

log = structlog.get_logger("hangup.proxy")


@dataclass(frozen=True)
class WorkerAssignment:
    slot: int
    """0 to N-1: which of the supervisor's workers this is (a restarted worker keeps its slot)."""
    listen: HostPort
    """The address every worker binds, with port 0 already resolved by the supervisor."""
    channel_fd: int
    """The worker's end of its socket pair with the supervisor."""

    def encode(self) -> str:
        return json.dumps({"slot": self.slot, "listen": str(self.listen), "fd": self.channel_fd})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerAssignment | None:
        """The assignment in ``environ``, or None when this process is not a worker."""
        text = environ.get(ASSIGNMENT_ENV)
        if text is None:
            return None
        fields = json.loads(text)
        return cls(int(fields["slot"]), parse_host_port(fields["listen"]), int(fields["fd"]))


def run_worker(config: ProxyConfig, assignment: WorkerAssignment) -> None:
    """Serve until SIGTERM (or the supervisor's end of the channel closing), then drain."""
    structlog.contextvars.bind_contextvars(pid=os.getpid(), worker=assignment.slot)
    channel = socket.socket(fileno=assignment.channel_fd)
    config = dataclasses.replace(config, listen=assignment.listen, admin=None)

    def listening(proxy: RunningProxy) -> None:
        loop = asyncio.get_running_loop()
        try:
            channel.sendall(LISTENING)
        except OSError:
            _supervisor_gone()
            return
        channel.setblocking(False)
        loop.add_reader(channel.fileno(), _on_supervisor_readable, loop, channel)

    try:
        run(config, on_listening=listening)
    finally:
        channel.close()


def _on_supervisor_readable(loop: asyncio.AbstractEventLoop, channel: socket.socket) -> None:
    try:
        data = channel.recv(64)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data:
        return  # the supervisor sends nothing; ignore rather than fail
    loop.remove_reader(channel.fileno())
    _supervisor_gone()


def _supervisor_gone() -> None:
    log.warning("supervisor_gone")
    # The one drain path: the same handler as an operator's SIGTERM (proxy.serving.server.serve).
    os.kill(os.getpid(), signal.SIGTERM)
