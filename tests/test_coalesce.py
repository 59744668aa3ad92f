"""The client transport that holds a turn's writes until the turn ends (proxy.edge.coalesce)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from proxy.edge.coalesce import CoalescingTransport, EndOfTurn
from tests.support import LOOPBACK, WAIT


@asynccontextmanager
async def coalesced_pair() -> AsyncIterator[tuple[CoalescingTransport, asyncio.StreamReader]]:
    """A real loopback connection: the coalescing side, and a reader on the far side."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(accept, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(WAIT):
        real, _ = await loop.create_connection(asyncio.Protocol, LOOPBACK, port)
        far, far_writer = await accepted.get()
    try:
        yield CoalescingTransport(real, EndOfTurn(loop)), far
    finally:
        real.abort()
        far_writer.close()
        server.close()
        await server.wait_closed()


async def test_writes_of_one_turn_wait_for_its_end_then_leave_in_order() -> None:
    async with coalesced_pair() as (transport, far):
        transport.write(b"head ")
        transport.writelines([b"body ", memoryview(b"tail")])
        # Nothing has reached the real transport yet; the waiting bytes still count as buffered.
        assert transport.get_write_buffer_size() == len(b"head body tail")
        async with asyncio.timeout(WAIT):
            assert await far.readexactly(len(b"head body tail")) == b"head body tail"
        assert transport.get_write_buffer_size() == 0


async def test_a_bytearray_is_copied_so_the_writer_may_reuse_it() -> None:
    async with coalesced_pair() as (transport, far):
        buffer = bytearray(b"first")
        transport.write(buffer)
        buffer[:] = b"XXXXX"
        async with asyncio.timeout(WAIT):
            assert await far.readexactly(5) == b"first"


async def test_close_writes_what_is_waiting_before_the_end_of_the_stream() -> None:
    async with coalesced_pair() as (transport, far):
        transport.write(b"last words")
        transport.close()
        async with asyncio.timeout(WAIT):
            assert await far.read() == b"last words"
        assert transport.is_closing()


async def test_abort_drops_what_is_waiting_as_the_real_abort_drops_its_buffer() -> None:
    async with coalesced_pair() as (transport, far):
        transport.write(b"never sent")
        transport.abort()
        async with asyncio.timeout(WAIT):
            try:
                received = await far.read()
            except ConnectionResetError:
                received = b""
        assert received == b""


async def test_writes_waiting_for_a_connection_that_closed_meanwhile_are_dropped() -> None:
    async with coalesced_pair() as (transport, far):
        transport.write(b"too late")
        transport._real.close()  # the client went away within the turn
        async with asyncio.timeout(WAIT):
            assert await far.read() == b""
        transport.flush()  # what the end of the turn does: no error, nothing written
        assert transport.get_write_buffer_size() == 0
