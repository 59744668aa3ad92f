"""``scripts/demo``: watch a hang-up travel from a client through hangup-proxy to the backend.

Starts ``hangup-demo-backend`` and ``hangup-proxy`` (both on 127.0.0.1, ephemeral ports) as child
processes, plays three short scenes against the proxy with raw sockets, and shows the log lines
of both processes that prove what happened. Every wait follows a log line and is bounded; if an
expected line does not come, the walkthrough says what it waited for, shows what it saw, and
exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from demo_backend.child_process import ChildProcess, ExpectationError, LogLine

LOOPBACK = "127.0.0.1"
STARTUP_WAIT = 20.0  # seconds for a child to log that it listens (first start compiles bytecode)
STEP_WAIT = 10.0  # seconds for any one expected log line
STOP_WAIT = 10.0  # seconds for a child to exit after SIGTERM before it is killed
GET_SECONDS = 30
POST_SECONDS = 1
QUERY_SECONDS = 30
WINDOW_SECONDS = 1.0  # how long the backend's CPU is watched after the query's hang-up
SHOWN_FIELDS = ("request_id", "method", "path", "seconds", "status", "outcome", "duration_ms")


class Walkthrough:
    def __init__(self, backend: ChildProcess, proxy: ChildProcess, proxy_port: int) -> None:
        self.backend = backend
        self.proxy = proxy
        self.proxy_port = proxy_port
        self.hung_up_at = datetime.now(UTC)

    async def send_and_hang_up(
        self, request: bytes, request_id: str, started_event: str = "slow_started"
    ) -> None:
        """Send ``request`` on a fresh connection; close it once the backend's handler runs."""
        _, writer = await asyncio.open_connection(LOOPBACK, self.proxy_port)
        writer.write(request)
        await writer.drain()
        started = await self.backend.wait_for_event(started_event, STEP_WAIT, request_id=request_id)
        show("backend", started)
        self.hung_up_at = datetime.now(UTC)
        writer.close()
        await writer.wait_closed()
        print("   client   closes its socket: the client has hung up")

    async def get_hangup(self) -> None:
        request_id = "demo-hangup-get"
        target = f"/slow?seconds={GET_SECONDS}"
        heading(f"1) GET {target} -- the client hangs up while the backend works")
        print(f"   client   GET {target}   X-Request-ID: {request_id}")
        await self.send_and_hang_up(request_bytes("GET", target, request_id), request_id)
        logged = await self.proxy.wait_for_event("request", STEP_WAIT, request_id=request_id)
        cancelled = await self.backend.wait_for_event(
            "handler_cancelled", STEP_WAIT, request_id=request_id
        )
        check("proxy", logged, status=499, outcome="client_hangup")
        print()
        show("proxy", logged)
        show("backend", cancelled)
        explain(
            f"The proxy saw the client leave, logged status {logged.get('status')} "
            f"({logged.get('outcome')}) and closed its connection to the backend. The backend's "
            "cancelling protocol saw that close and cancelled the handler "
            f"{since(self.hung_up_at, cancelled)} after the hang-up, instead of letting it work "
            f"{GET_SECONDS} s on an answer nobody will read."
        )

    async def post_hangup(self) -> None:
        request_id = "demo-hangup-post"
        target = f"/slow?seconds={POST_SECONDS}"
        heading(f"2) POST {target} -- the client hangs up the same way")
        body = b"order=42&quantity=1"
        print(f"   client   POST {target}   X-Request-ID: {request_id}   ({len(body)}-byte body)")
        request = request_bytes("POST", target, request_id, body)
        await self.send_and_hang_up(request, request_id)
        completed = await self.backend.wait_for_event(
            "slow_completed", STEP_WAIT, request_id=request_id
        )
        logged = await self.proxy.wait_for_event("request", STEP_WAIT, request_id=request_id)
        check("proxy", logged, outcome="client_hangup")
        print()
        show("backend", completed)
        show("proxy", logged)
        explain(
            "POST is not in the cancel list (default GET,HEAD,OPTIONS,TRACE): a write stopped "
            "half-way could leave data half-changed, so the proxy carried the request to the end, "
            f"logged the client's hang-up ({logged.get('outcome')}) and dropped the answer."
        )

    async def query_hangup(self) -> None:
        request_id = "demo-hangup-query"
        target = f"/work/sqlite?seconds={QUERY_SECONDS}"
        heading(f"3) GET {target} -- a CPU-bound SQLite query in a thread, then a hang-up")
        print(f"   client   GET {target}   X-Request-ID: {request_id}")
        await self.send_and_hang_up(
            request_bytes("GET", target, request_id), request_id, "work_started"
        )
        before = cpu_seconds(self.backend.pid)
        stopped = await self.backend.wait_for_event(
            "work_stopped", STEP_WAIT, request_id=request_id
        )
        cancelled = await self.backend.wait_for_event(
            "handler_cancelled", STEP_WAIT, request_id=request_id
        )
        # Not a wait for an event: the window over which the backend's CPU time is read.
        await asyncio.sleep(WINDOW_SECONDS)
        used = cpu_seconds(self.backend.pid) - before
        print()
        show("backend", stopped)
        show("backend", cancelled)
        explain(
            "Cancelling the handler alone would not stop a query already running in a worker "
            "thread. The recipe (demo_backend/work/sqlite_query.py) calls "
            "sqlite3.Connection.interrupt() when it is cancelled: the query stopped "
            f"{since(self.hung_up_at, stopped)} after the hang-up, and the backend used "
            f"{used:.3f} s of CPU in the {WINDOW_SECONDS:.0f} s after it (a query left running "
            f"would have used about {WINDOW_SECONDS:.0f} s)."
        )

    async def stats(self) -> None:
        heading("4) GET /stats through the proxy -- the backend's own count")
        url = f"http://{LOOPBACK}:{self.proxy_port}/stats"
        timeout = aiohttp.ClientTimeout(total=STEP_WAIT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers={"X-Request-ID": "demo-stats"}) as response,
        ):
            counts: dict[str, Any] = await response.json()
        check("backend's /stats", counts, started=2, completed=1, cancelled=1)
        work = counts.pop("work", {})
        check("backend's /stats work", work.get("sqlite", {}), started=1, cancelled=1, completed=0)
        for name, value in counts.items():
            print(f"   {name:<22} {value}")
        for name, value in work.items():
            print(f"   work.{name:<17} {value}")
        explain(
            "Two slow handlers started: the GET was cancelled, the POST completed; the query was "
            "started and cancelled. "
            "Run it against your own app: uvicorn --http "
            "demo_backend.protocol:CancellingHttpToolsProtocol yourapp:app"
        )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of every thread of ``pid``, read from outside (proc(5))."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request_bytes(method: str, target: str, request_id: str, body: bytes = b"") -> bytes:
    head = [f"{method} {target} HTTP/1.1", f"Host: {LOOPBACK}", f"X-Request-ID: {request_id}"]
    if body:
        head += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def check(source: str, seen: dict[str, Any], **expected: Any) -> None:
    """Fail the walkthrough, showing what was seen, unless ``seen`` has the ``expected`` fields."""
    wrong = {key: seen.get(key) for key, value in expected.items() if seen.get(key) != value}
    if wrong:
        raise ExpectationError(f"{source} said {wrong}, expected {expected}; whole line: {seen}")


def heading(text: str) -> None:
    print(f"\n{text}")


def show(who: str, line: LogLine) -> None:
    fields = " ".join(f"{key}={line[key]}" for key in SHOWN_FIELDS if key in line)
    print(f"   {who:<8} {line.get('event', '?'):<18} {fields}")


def explain(text: str) -> None:
    print()
    print(textwrap.fill(text, width=96, initial_indent="   ", subsequent_indent="   "))


def since(moment: datetime, line: LogLine) -> str:
    """How long after ``moment`` a log line was written (both from this machine's clock)."""
    try:
        logged = datetime.fromisoformat(str(line["timestamp"]))
    except (KeyError, ValueError):
        return "moments"
    milliseconds = max((logged - moment).total_seconds() * 1000, 0.0)
    return f"{milliseconds:.0f} ms" if milliseconds >= 1 else "less than a millisecond"


def script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ExpectationError(f"{name} is not installed next to {sys.executable}")
    return str(path)


def child_environment() -> dict[str, str]:
    # The scenes assume the default policy; a HANGUP_* variable in the caller's shell would
    # change what the children do and make the story wrong.
    return {key: value for key, value in os.environ.items() if not key.startswith("HANGUP_")}


async def start_backend(children: list[ChildProcess]) -> str:
    """Start the backend; its URL once it listens."""
    # Only the proxy reaches it: it carries out the proxy's per-request decision (the README's
    # "One policy for both halves").
    argv = [script("hangup-demo-backend"), "--port", "0", "--trust-decision-header"]
    backend = await ChildProcess.start("backend", argv, child_environment())
    children.append(backend)
    listening = await backend.wait_for_event("backend_listening", STARTUP_WAIT)
    url = f"http://{LOOPBACK}:{listening['port']}"
    policy = listening.get("cancel_methods")
    if listening.get("trust_decision_header"):
        policy = f"what hangup decides, else {policy}"
    print(f"   backend  hangup-demo-backend  pid {backend.pid:<7} {url}  (cancels {policy})")
    return url


async def start_proxy(children: list[ChildProcess], upstream: str) -> int:
    """Start the proxy in front of ``upstream``; its port once it listens."""
    argv = [script("hangup-proxy"), "--listen", f"{LOOPBACK}:0", "--upstream", upstream]
    proxy = await ChildProcess.start("proxy", argv, child_environment())
    children.append(proxy)
    listening = await proxy.wait_for_event("proxy_listening", STARTUP_WAIT)
    port = int(listening["port"])
    url = f"http://{LOOPBACK}:{port}"
    print(f"   proxy    hangup-proxy         pid {proxy.pid:<7} {url}  -> {upstream}")
    return port


async def run() -> int:
    print("hangup walkthrough: a client hangs up, the proxy notices, the backend stops working.\n")
    children: list[ChildProcess] = []
    try:
        upstream = await start_backend(children)
        proxy_port = await start_proxy(children, upstream)
        backend, proxy = children
        walkthrough = Walkthrough(backend, proxy, proxy_port)
        await walkthrough.get_hangup()
        await walkthrough.post_hangup()
        await walkthrough.query_hangup()
        await walkthrough.stats()
    except (ExpectationError, OSError, aiohttp.ClientError) as exc:
        print(f"\nwalkthrough failed: {exc}")
        for child in children:
            print(f"\n   last lines from the {child.name} (pid {child.pid}):")
            for text in child.tail():
                print(f"   | {text}")
        return 1
    finally:
        # The proxy first: it is the front door, and the backend should outlive its clients.
        await stop(*reversed(children))
    print("\nDone.")
    return 0


async def stop(*children: ChildProcess) -> None:
    statuses = [f"{child.name} exited {await child.stop(STOP_WAIT)}" for child in children]
    if statuses:
        print(f"\nStopped with SIGTERM: {', '.join(statuses)}.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Start the demo backend behind hangup-proxy on 127.0.0.1 and show a hang-up.",
    )
    parser.parse_args(argv)
    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
