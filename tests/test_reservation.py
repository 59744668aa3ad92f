"""The supervisor's hold on the listen address: one port for every worker, nobody else's."""

from __future__ import annotations

import socket

import pytest

from proxy.serving.server import ListenError
from proxy.wire.address import HostPort
from proxy.workers.reservation import reserve_address
from tests.support import LOOPBACK


def reuse_port_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def test_port_0_is_resolved_to_one_port_that_workers_can_share() -> None:
    reservation, address = reserve_address(HostPort(LOOPBACK, 0))
    with reservation, reuse_port_socket() as worker, reuse_port_socket() as other_worker:
        reserved = reservation.getsockname()
        worker.bind((LOOPBACK, address.port))
        worker.listen()
        other_worker.bind((LOOPBACK, address.port))
        other_worker.listen()

    assert address == HostPort(LOOPBACK, reserved[1])
    assert address.port != 0


def test_the_reservation_itself_accepts_no_connection() -> None:
    reservation, address = reserve_address(HostPort(LOOPBACK, 0))
    with reservation, socket.socket() as client, pytest.raises(ConnectionRefusedError):
        client.connect((LOOPBACK, address.port))


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain-listener", "so-reuseport-group"])
def test_an_address_someone_listens_on_is_refused_even_with_so_reuseport(reuse_port: bool) -> None:
    with reuse_port_socket() if reuse_port else socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=f"cannot listen on {LOOPBACK}:{port}"):
            reserve_address(HostPort(LOOPBACK, port))
