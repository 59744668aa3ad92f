"""Closing an upstream connection so that the upstream sees it end within the current turn."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def close_now(transport: asyncio.Transport) -> None:
    """Close ``transport`` (abort it if a write is still queued) and send the FIN at once."""
    if transport.is_closing():
        return
    if transport.get_write_buffer_size():
        # close() would first wait to flush a request the upstream is not reading.
        transport.abort()
    else:
        transport.close()
    _send_fin_now(transport)


def _send_fin_now(transport: asyncio.Transport) -> None:
    """Shut the socket down at once, so the upstream sees the connection end in this turn.

    Neither uvloop nor asyncio closes a socket in ``transport.close()`` or ``abort()``: both
    schedule ``connection_lost`` with ``call_soon`` and close the descriptor there, behind every
    callback already queued. Under load that queue is most of a loop turn (about 1 ms at the
    benchmark's load), all of it added to a hang-up's propagation. ``shutdown`` sends the FIN now;
    the descriptor is still closed by the loop, once. The descriptor is wrapped without a ``dup``
    and detached again, so this ``socket`` object never closes it.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    descriptor = sock.fileno()
    if descriptor < 0:
        return
    with contextlib.suppress(OSError):
        wrapper = socket.socket(sock.family, sock.type, fileno=descriptor)
        try:
            wrapper.shutdown(socket.SHUT_RDWR)
        finally:
            wrapper.detach()
