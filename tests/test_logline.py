"""The canonical line's fast path writes what structlog's JSON pipeline wrote, and promptly.

Cases that configure logging run in a fresh interpreter (see ``tests/test_logs.py``): structlog
caches configured loggers on first use, so reconfiguring here would detach the other tests'
capture. The proxy runs with a buffered stdout (``PYTHONUNBUFFERED`` empty), as in production
outside the container image, so that nothing but ``proxy.logs.logstream`` gets its lines out.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import re
import signal
from http import HTTPStatus
from typing import Any

import pytest
import structlog

from proxy.exchange.state import Exchange
from proxy.logs import logline
from proxy.logs.logstream import LogStream
from proxy.policy.routes import Action, Decision
from tests.raw_upstream import RawUpstream, ReceivedRequest, UpstreamConnection
from tests.support import (
    LOOPBACK,
    RawConnection,
    ScriptProcess,
    request_bytes,
    run_python,
    script_path,
    watch_logs,
)

USUAL_FIELDS: dict[str, Any] = {
    "request_id": "rid",
    "method": "GET",
    "path": "/",
    "status": 200,
    "outcome": "completed",
    "duration_ms": 0.123,
    "upstream_status": 200,
    "client": "127.0.0.1",
}
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
BUFFERED_STDOUT = {"PYTHONUNBUFFERED": ""}

EXCHANGES = r"""
import structlog
from proxy.exchange.state import Exchange
from proxy.policy.routes import Action, Decision
from proxy.upstream.connection import UpstreamConnectError

def completed():
    exchange = Exchange("rid-1", "GET", "/päth", "127.0.0.1", cancellable=True)
    exchange.upstream_answered(200)
    exchange.completed(200)
    return exchange

def hung_up():
    exchange = Exchange("rid-2", "POST", "/slow", None, cancellable=False)
    exchange.decision = Decision(Action.GRACE, 2.5, "POST /slow*")
    exchange.client_left()
    return exchange

def odd_completed():
    exchange = Exchange("rid-5", "GET", '/"q"\\\x01\u2028', None, cancellable=True)
    exchange.completed(204)
    return exchange

def upstream_error():
    exchange = Exchange("rid-3", "GET", "/", "::1", cancellable=True)
    exchange.upstream_failed(UpstreamConnectError("connection refused"))
    return exchange
"""


def run_script(body: str, *argv: str) -> list[str]:
    return run_python(EXCHANGES + body, *argv)


@pytest.mark.parametrize(
    "bound",
    [
        pytest.param("request_id='rid-bound'", id="request-id-bound-as-the-proxy-does"),
        pytest.param("request_id='rid-bound', worker=3", id="another-key-bound"),
    ],
)
def test_the_canonical_line_is_the_json_line_structlogs_pipeline_wrote(bound: str) -> None:
    fast_and_chain = f"""
from proxy.logs import logline
from proxy.logs.configure import configure_logging
configure_logging("json", "info")
structlog.contextvars.bind_contextvars({bound})
exchanges = [completed(), odd_completed(), hung_up(), upstream_error()]
for exchange in exchanges:
    exchange.write_log_line()
logline.install(None)  # the processor chain, as before
for exchange in exchanges:
    exchange.write_log_line()
"""
    lines = run_script(fast_and_chain)
    assert len(lines) == 8
    fast, chain = [json.loads(line) for line in lines[:4]], [json.loads(line) for line in lines[4:]]

    for ours, structlogs in zip(fast, chain, strict=True):
        assert list(ours) == list(structlogs)  # the same keys in the same order
        for varying in ("timestamp", "duration_ms"):
            assert type(ours.pop(varying)) is type(structlogs.pop(varying))
        assert ours == structlogs
    assert fast[0] == {
        "request_id": "rid-1",  # the field given wins over the bound one, as with structlog
        "method": "GET",
        "path": "/päth",
        "status": 200,
        "outcome": "completed",
        "upstream_status": 200,
        "client": "127.0.0.1",
        "event": "request",
        **({"worker": 3} if "worker" in bound else {}),
        "level": "info",
    }
    assert (fast[1]["path"], fast[1]["client"]) == ('/"q"\\\x01\u2028', None)
    assert (fast[2]["policy_action"], fast[2]["grace_seconds"]) == ("grace", 2.5)
    assert (fast[3]["level"], fast[3]["reason"]) == ("warning", "connection refused")


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(USUAL_FIELDS, id="usual"),
        pytest.param({**USUAL_FIELDS, "status": None, "client": None}, id="nulls"),
        pytest.param({**USUAL_FIELDS, "path": '/"\\\n\x00é\U0001f600'}, id="escapes"),
        pytest.param({**USUAL_FIELDS, "duration_ms": 1e-07}, id="tiny-float"),
    ],
)
def test_the_usual_fields_render_as_json_dumps_writes_them(fields: dict[str, Any]) -> None:
    members = logline.render_request_fields(dict(fields))

    assert members is not None
    assert "{" + members + "}" == json.dumps(fields)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({**USUAL_FIELDS, "reason": "x"}, id="another-field"),
        pytest.param({**USUAL_FIELDS, "status": HTTPStatus.OK}, id="an-int-enum"),
        pytest.param({**USUAL_FIELDS, "status": True}, id="a-bool"),
        pytest.param({**USUAL_FIELDS, "duration_ms": float("nan")}, id="not-finite"),
        pytest.param({**USUAL_FIELDS, "client": b"127.0.0.1"}, id="bytes"),
    ],
)
def test_any_other_shape_is_left_to_the_json_encoder(fields: dict[str, Any]) -> None:
    assert logline.render_request_fields(dict(fields)) is None


def test_the_timestamp_is_iso_8601_utc_with_microseconds_and_now() -> None:
    [line] = run_script(
        "from proxy.logs.configure import configure_logging\n"
        "configure_logging('json', 'info')\n"
        "completed().write_log_line()\n"
    )
    stamp = json.loads(line)["timestamp"]

    assert ISO_UTC.fullmatch(stamp), stamp
    written = datetime.datetime.fromisoformat(stamp)
    assert written.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.UTC) - written) < datetime.timedelta(seconds=30)


def test_log_level_filters_the_canonical_line_by_its_level() -> None:
    body = """
import sys
from proxy.logs.configure import configure_logging
configure_logging("json", sys.argv[1])
completed().write_log_line()
upstream_error().write_log_line()
"""
    outcomes = {
        level: [json.loads(line)["outcome"] for line in run_script(body, level)]
        for level in ("debug", "info", "warning", "error")
    }

    assert outcomes == {
        "debug": ["completed", "upstream_error"],
        "info": ["completed", "upstream_error"],
        "warning": ["upstream_error"],
        "error": [],
    }


def test_the_console_format_still_renders_the_canonical_line() -> None:
    [line] = run_script(
        "from proxy.logs.configure import configure_logging\n"
        "configure_logging('console', 'info')\n"
        "completed().write_log_line()\n"
    )

    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z \[info\s*\] request\s", line), line
    assert "status=200" in line
    assert "outcome=completed" in line


def test_a_line_still_waiting_when_the_event_loop_ends_is_written_at_exit() -> None:
    body = """
import asyncio
from proxy.logs.configure import configure_logging
configure_logging("json", "info")
loop = asyncio.new_event_loop()
def stop_then_log():
    loop.stop()  # this turn is the last: the write it schedules never runs
    completed().write_log_line()
loop.call_soon(stop_then_log)
loop.run_forever()
loop.close()
"""
    [line] = run_script(body)
    assert json.loads(line)["request_id"] == "rid-1"


def test_a_capture_sees_the_canonical_line_with_every_field() -> None:
    exchange = Exchange("rid-4", "DELETE", "/item", "127.0.0.1", cancellable=True)
    exchange.decision = Decision(Action.CANCEL, 0.0, "default")
    exchange.client_left()

    with watch_logs() as logs:
        exchange.write_log_line()

    [entry] = logs.events("request")
    entry.pop("duration_ms")
    assert dict(entry) == {
        "request_id": "rid-4",
        "method": "DELETE",
        "path": "/item",
        "status": 499,
        "outcome": "client_hangup",
        "upstream_status": None,
        "client": "127.0.0.1",
        "phase": "awaiting_upstream_headers",
        "cancelled": True,
        "upstream_closed": False,
        "policy_rule": "default",
        "policy_action": "cancel",
        "event": "request",
        "log_level": "info",
    }


def test_the_fast_path_resumes_once_a_capture_ends() -> None:
    written = io.StringIO()
    processors = structlog.get_config()["processors"]
    writer = logline.LineWriter(LogStream(written), 10, processors)

    with watch_logs() as logs:
        writer.write("info", "request", {"request_id": "captured"})
    writer.write("info", "request", {"request_id": "written"})

    assert [entry["request_id"] for entry in logs.events("request")] == ["captured"]
    assert [json.loads(line)["request_id"] for line in written.getvalue().splitlines()] == [
        "written"
    ]


async def answer_at_once(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def never_answer(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
    await asyncio.Event().wait()
    return b""


def proxy_argv(upstream: RawUpstream, *extra: str) -> list[str]:
    listen = f"{LOOPBACK}:0"
    return [script_path("hangup-proxy"), "--listen", listen, "--upstream", upstream.url, *extra]


async def test_the_proxy_writes_the_canonical_line_promptly_without_further_traffic(
    upstream: RawUpstream,
) -> None:
    upstream.answer = answer_at_once
    proxy = await ScriptProcess.start(proxy_argv(upstream), env=BUFFERED_STDOUT)
    try:
        port = await proxy.listening_port("proxy_listening")
        client = await RawConnection.open(port)
        await client.send(request_bytes("GET", "/", [("X-Request-ID", "prompt-1")]))
        assert (await client.read_response()).status == 200
        # Nothing else happens: no request, no signal, no other event to push the line out.
        line: dict[str, Any] = await proxy.wait_for_event("request", request_id="prompt-1")
        await client.close()
    finally:
        await proxy.stop()

    assert ISO_UTC.fullmatch(line["timestamp"])


async def test_a_line_written_as_the_proxy_shuts_down_gracefully_reaches_stdout_in_order(
    upstream: RawUpstream,
) -> None:
    upstream.answer = never_answer
    argv = proxy_argv(upstream, "--drain-timeout", "0.2")
    proxy = await ScriptProcess.start(argv, env=BUFFERED_STDOUT)
    try:
        port = await proxy.listening_port("proxy_listening")
        client = await RawConnection.open(port)
        await client.send(request_bytes("GET", "/held", [("X-Request-ID", "held-1")]))
        await upstream.wait_requests(1)
        proxy.send_signal(signal.SIGTERM)
        # The drain cuts the held request: its line is written as the proxy shuts down.
        code = await proxy.wait_exit()
        await client.close()
    finally:
        await proxy.stop()

    events = [line["event"] for line in proxy.lines]
    assert code == 0
    assert events[-3:] == ["proxy_draining", "request", "proxy_stopped"]
    assert proxy.events("request")[0]["outcome"] == "drain_timeout"
