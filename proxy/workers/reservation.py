"""The supervisor's hold on the listen address that its workers share
(``proxy.workers.supervisor``).

The supervisor binds, and never listens on, one SO_REUSEPORT socket on the listen address before
any worker starts. That resolves port 0 to the one port all workers bind, fails once with the
usual one-line error when the address is taken, and holds the port while workers restart. A socket
that does not listen is in no accept queue, so it never takes a connection from the workers.
"""

from __future__ import annotations

import socket

from proxy.serving.server import ListenError
from proxy.wire.address import HostPort


def reserve_address(address: HostPort) -> tuple[socket.socket, HostPort]:
    """Bind (never listen on) ``address`` with SO_REUSEPORT; the socket and the bound port.

    A probe binds first without SO_REUSEPORT, so that an address held by another process's
    SO_REUSEPORT listeners (a second hangup started on the same port by mistake) is refused
    like any taken address instead of being silently shared.
    """
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with _socket_for(family, kind, proto, reuse_port=False) as probe:
            probe.bind(sockaddr)
            port = probe.getsockname()[1]
        sock = _socket_for(family, kind, proto, reuse_port=True)
        try:
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise ListenError(address, exc) from exc
    return sock, HostPort(address.host, port)


def _socket_for(family: int, kind: int, proto: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    # The options asyncio's create_server(reuse_port=True) sets on each worker's socket: the
    # kernel lets sockets share a port only when every one of them sets SO_REUSEPORT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock
