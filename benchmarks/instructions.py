"""``python -m benchmarks.instructions``: user-space instructions per request, for A/B of a change.

On a shared 2-core VM, req/s and even CPU time per request move by 10-30 % from one minute to the
next (the host's neighbours), which hides the 1-5 % that one hot-path change is worth. The count
of instructions a proxy executes per request does not move: under valgrind's callgrind, two runs
of one tree agree within 0.1 %. So this tool starts the benchmark's nginx origin and one proxy
(hangup, or with ``--proxy bare`` the bare aiohttp proxy) under ``valgrind --tool=callgrind
--instr-atstart=no``, warms it up uninstrumented, turns instrumentation on
(``callgrind_control -i on``), sends a fixed number of keep-alive GETs (or the POST case's body)
from ``--connections`` asyncio clients, dumps (``callgrind_control -d``), and prints the proxy's
instructions ÷ requests.

What it counts: every instruction of the proxy's process in user space, the interpreter's and the
C extensions' (uvloop, llhttp, aiohttp's writer) alike. What it cannot count: the kernel's share
(system calls, the loopback path), about a quarter of a request's CPU here and alike for any
proxy making the same four socket operations, nor cache misses. It answers "did this change make
the proxy do less?"; ``benchmarks/run`` answers "how fast is it?". ``--connections 1`` gives one
request per loop turn (nothing batched, the steadiest count); more connections let turns batch
their writes, as under wrk.

``--backend KEY`` counts a uvicorn backend of the backend half instead (``benchmarks.backends``:
``uvicorn-httptools``, ``cancelling-httptools``, ``uvicorn-h11``, ``cancelling-h11``), answering
FastAPI's hello world at ``GET /`` with no proxy and no origin: the protocol's cost a request.

Example A/B, a change against the last commit (the editable install honours ``PYTHONPATH``)::

    git archive HEAD proxy | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before python -m benchmarks.instructions
    python -m benchmarks.instructions
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import backends, nginx, post
from benchmarks.plan import BARE_PROXY_ARGV, HANGUP_SCRIPT, ROOT
from benchmarks.processes import LOOPBACK, Fleet, StartError, free_port, wait_until_listening
from benchmarks.tools import ToolError, ensure_tools

_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
_TOTALS = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


def _say(message: str) -> None:
    print(f"instructions: {message}", file=sys.stderr, flush=True)


def get_request(path: str) -> bytes:
    """A keep-alive GET of ``path``, as each client repeats it."""
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: instructions\r\n\r\n".encode()


def request_bytes(size: str, *, with_body: bool) -> bytes:
    """The request each client repeats: a GET of ``/SIZE``, or the POST case's JSON body."""
    if with_body:
        body = post.BODY
        return (
            f"POST /{post.PATH} HTTP/1.1\r\nHost: bench\r\nContent-Type: {post.CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
    return get_request(f"/{size}")


async def _one_client(port: int, request: bytes, count: int) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = _CONTENT_LENGTH.search(head)
            if length is None:
                raise StartError(f"an answer without Content-Length: {head[:200]!r}")
            await reader.readexactly(int(length[1]))
    finally:
        writer.close()


async def load(port: int, request: bytes, connections: int, per_connection: int) -> None:
    async with asyncio.timeout(600):
        await asyncio.gather(
            *(_one_client(port, request, per_connection) for _ in range(connections))
        )


def _callgrind_total(out_prefix: Path) -> int:
    """The instructions in the dumps ``callgrind_control -d`` wrote (the exit dump is empty)."""
    total = 0
    for dump in out_prefix.parent.glob(f"{out_prefix.name}.*"):
        total += sum(int(found) for found in _TOTALS.findall(dump.read_text())[:1])
    return total


async def _callgrind_control(*args: str) -> None:
    control = await asyncio.create_subprocess_exec(
        "callgrind_control",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await control.wait() != 0:
        raise StartError(f"callgrind_control {' '.join(args)} exited with {control.returncode}")


async def measure(args: argparse.Namespace, fleet: Fleet, prefix: Path) -> str:
    port = free_port()
    if args.backend is not None:
        name = args.backend
        argv = backends.uvicorn_argv(backends.BACKENDS[name], port)
        request = get_request(backends.PATH)
        what = f"GET {backends.PATH}"
    else:
        name = args.proxy
        argv = await _proxy_argv(args, fleet, prefix, port)
        request = request_bytes(args.size, with_body=args.post)
        what = f"POST /{post.PATH}" if args.post else f"GET /{args.size}"
    out = prefix / "callgrind.out"
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}.%p",
    ]
    server = fleet.spawn(name, [*valgrind, *argv], core=None, cwd=ROOT)
    # Start-up under valgrind takes a while (every import is translated).
    await wait_until_listening(name, server, port, None, within=180)
    await load(port, request, args.connections, 20)  # warm-up, uninstrumented
    pid = str(server.pid)
    await _callgrind_control("-i", "on", pid)
    per_connection = max(1, args.requests // args.connections)
    await load(port, request, args.connections, per_connection)
    await _callgrind_control("-d", pid)
    requests = per_connection * args.connections
    total = _callgrind_total(out)
    return (
        f"{name}: {total / requests / 1000:.1f} k instructions per request "
        f"({what}, {requests} requests on {args.connections} connections)"
    )


async def _proxy_argv(args: argparse.Namespace, fleet: Fleet, prefix: Path, port: int) -> list[str]:
    """Start the nginx origin; the command line of the proxy in front of it, on ``port``."""
    tools = ensure_tools(_say)
    origin_port = free_port()
    config = nginx.origin_config(prefix, origin_port, nginx.write_site(prefix))
    origin = fleet.spawn(
        "nginx origin", nginx.nginx_argv(tools.nginx, prefix, "origin", config), core=None
    )
    await wait_until_listening("nginx origin", origin, origin_port, prefix / "origin-error.log")
    listen = f"{LOOPBACK}:{port}"
    if args.proxy == "bare":
        return [*BARE_PROXY_ARGV, "--listen", listen, "--upstream", f"{LOOPBACK}:{origin_port}"]
    upstream = f"http://{LOOPBACK}:{origin_port}"
    return [str(HANGUP_SCRIPT), "--listen", listen, "--upstream", upstream]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--proxy", choices=["hangup", "bare"], default="hangup")
    parser.add_argument(
        "--backend",
        choices=sorted(backends.BACKENDS),
        help="count this uvicorn backend of the backend half instead of a proxy",
    )
    parser.add_argument("--size", choices=sorted(nginx.BODY_SIZES), default="1k")
    parser.add_argument("--post", action="store_true", help="the POST case instead of a GET")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3200)
    args = parser.parse_args(argv)
    for program in ("valgrind", "callgrind_control"):
        if shutil.which(program) is None:
            _say(f"{program} not found: apt-get install valgrind")
            return 2
    fleet = Fleet(_say, None)
    with tempfile.TemporaryDirectory(prefix="hangup-instructions-") as tmp:
        prefix = Path(tmp)
        prefix.chmod(0o755)
        try:
            report = asyncio.run(measure(args, fleet, prefix))
        except (StartError, ToolError, OSError, subprocess.SubprocessError) as exc:
            _say(f"measuring did not complete: {exc}")
            return 1
        finally:
            fleet.stop_all()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
