"""A minimal HTTP/1.1 client on raw non-blocking sockets: a GET or a POST, its answer read whole,
the connection left open (for the held connections of ``memory`` and the start-up check)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from benchmarks.processes import LOOPBACK


@dataclass(frozen=True)
class Answer:
    status: int
    body_length: int


async def get(port: int, path: str) -> tuple[socket.socket, Answer]:
    """Send ``GET path`` on a new keep-alive connection and read the answer to its end.

    The caller owns the returned socket (still open) and closes it.
    """
    sock = await connect(port)
    try:
        answer = await ask(sock, f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    except BaseException:
        sock.close()
        raise
    return sock, answer


def post_request(path: str, body: bytes, content_type: str) -> bytes:
    """``POST path`` with ``body``, head and body in one piece (as wrk sends it)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def connect(port: int) -> socket.socket:
    """A new non-blocking connection to ``port`` on the loopback, owned by the caller."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (LOOPBACK, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def ask(sock: socket.socket, request: bytes) -> Answer:
    """Send one whole request on ``sock`` and read its answer to the end."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, request)
    return await _read_answer(loop, sock)


async def _read_answer(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Answer:
    data = b""
    while (end := data.find(b"\r\n\r\n")) == -1:
        data += await _recv(loop, sock)
    head = data[:end].lower()
    body = data[end + 4 :]
    status = int(head.split(b" ", 2)[1])
    if b"\r\ntransfer-encoding: chunked" in head:
        # Enough for the answers here: the body ends with the last-chunk and no trailers.
        while not body.endswith(b"\r\n0\r\n\r\n"):
            body += await _recv(loop, sock)
        return Answer(status, len(body))
    length = int(head.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += await _recv(loop, sock)
    return Answer(status, len(body))


async def _recv(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    chunk = await loop.sock_recv(sock, 65536)
    if not chunk:
        raise ConnectionError("the server closed a connection it should have kept open")
    return chunk
