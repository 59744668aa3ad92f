"""One exchange's upstream side, and the hook that cuts it when the client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.exchange.state import Exchange
from proxy.upstream.connection import UpstreamConnection

if TYPE_CHECKING:
    from proxy.edge.frontend import GateRequestHandler


class UpstreamLeg:
    """The upstream side of one exchange: its connection and, for a request body, the upload.

    A cancellable exchange's leg is also its hang-up hook (``arm``): the client connection calls
    it from its own callbacks (``eof_received`` or ``connection_lost``;
    ``GateRequestHandler.hangup_hooks``), and it closes the upstream connection there and then.
    Cancelling the exchange's task closes it too, but only when the task next runs: under load
    that is one whole turn of the event loop later (benchmarks/). ``disarm`` (when the exchange
    ends) takes the hook back, so a later hang-up on the same client connection never closes a
    pooled connection that serves someone else by then.
    """

    __slots__ = ("armed", "client", "connection", "exchange", "hooks", "upload")

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.connection: UpstreamConnection | None = None
        self.upload: asyncio.Task[None] | None = None
        self.armed = False
        self.client: GateRequestHandler | None = None
        self.hooks: list[Callable[[], object]] = []

    def arm(self, client: GateRequestHandler) -> None:
        """Be called when the client leaves, until ``disarm``."""
        self.armed = True
        self.client = client
        self.hooks = client.hangup_hooks
        self.hooks.append(self)

    def disarm(self) -> None:
        if self.armed:
            self.armed = False
            # A plain try, not contextlib.suppress (a context manager per request, issue 16).
            try:  # noqa: SIM105
                self.hooks.remove(self)
            except ValueError:  # already run: the hooks are run once
                pass

    def __call__(self) -> None:
        """The client left: record it, and cut the connection, if one is open."""
        connection = self.connection
        if not self.armed or connection is None or connection.lost:
            return
        self.armed = False
        stalled = self.client is not None and self.client.send_timed_out
        self.exchange.client_left(send_timed_out=stalled)
        self.cut()

    def cut(self) -> None:
        """Close the upstream connection (if any), never to be pooled, and record that the
        client's leaving closed it: the one place a hang-up reaches the upstream socket."""
        connection = self.connection
        if connection is not None:
            connection.close()
        self.exchange.closed_upstream()
