"""Per-route cancellation rules: parsing, first-match decisions, and what each does to a hang-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.policy.methods import CancelPolicy
from proxy.policy.routes import (
    Action,
    Decision,
    RoutePolicy,
    Rule,
    load_policy_file,
    parse_rule,
    parse_rules,
)
from proxy.wire.address import HostPort
from tests.admin_support import scrape
from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream, ReceivedRequest, UpstreamConnection, response_bytes
from tests.support import (
    LOOPBACK,
    RawConnection,
    proxy_argv,
    request_bytes,
    running_script,
    watch_logs,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("GET /a=cancel", Rule(frozenset({"GET"}), "/a", Action.CANCEL), id="cancel"),
        pytest.param("/a=never", Rule(None, "/a", Action.NEVER), id="any-method"),
        pytest.param("* /a=never", Rule(None, "/a", Action.NEVER), id="star-method"),
        pytest.param(
            "get,HEAD /v1/*=grace=2.5",
            Rule(frozenset({"GET", "HEAD"}), "/v1/*", Action.GRACE, 2.5),
            id="grace-glob",
        ),
        pytest.param(" POST  /x = Grace = 1 ", Rule(frozenset({"POST"}), "/x", Action.GRACE, 1.0)),
    ],
)
def test_rules_parse(text: str, expected: Rule) -> None:
    assert parse_rule(text, "") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("GET /a", "PATH=ACTION", id="no-action"),
        pytest.param("GET /a=stop", "cancel, never or grace", id="unknown-action"),
        pytest.param("GET /a=grace=0", "positive", id="zero-grace"),
        pytest.param("GET /a=grace=soon", "grace needs seconds", id="bad-grace"),
        pytest.param("GET /a=never=3", "cancel, never or grace", id="never-with-value"),
        pytest.param("GET a=cancel", "start with '/'", id="relative-path"),
        pytest.param("GET POST /a=cancel", "PATH=ACTION", id="too-many-words"),
        pytest.param("G@T /a=cancel", "not an HTTP method", id="bad-method"),
    ],
)
def test_bad_rules_say_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rule(text, "")


def test_rules_are_named_by_position() -> None:
    assert [rule.name for rule in parse_rules("/a=never; ;/b=cancel")] == ["route-1", "route-2"]


POLICY = RoutePolicy(
    rules=(
        Rule(frozenset({"POST"}), "/v1/chat/*", Action.CANCEL, name="route-1"),
        Rule(None, "/v1/", Action.GRACE, 3.0, "route-2"),
        Rule(frozenset({"GET"}), "/report", Action.NEVER, name="route-3"),
    ),
    default=CancelPolicy(),
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        pytest.param("POST", "/v1/chat/x", Decision(Action.CANCEL, 0.0, "route-1"), id="glob"),
        pytest.param("GET", "/v1/chat/x", Decision(Action.GRACE, 3.0, "route-2"), id="2nd-rule"),
        pytest.param("PUT", "/v1/files", Decision(Action.GRACE, 3.0, "route-2"), id="prefix"),
        pytest.param("GET", "/report/2026", Decision(Action.NEVER, 0.0, "route-3"), id="prefix-2"),
        pytest.param(
            "GET", "/reports", Decision(Action.CANCEL, 0.0, "default"), id="not-a-segment-prefix"
        ),
        pytest.param("GET", "/other", Decision(Action.CANCEL, 0.0, "default"), id="default-safe"),
        pytest.param("POST", "/other", Decision(Action.NEVER, 0.0, "default"), id="default-write"),
        pytest.param(
            "POST", "/v1%2Fchat/x", Decision(Action.NEVER, 0.0, "default"), id="escapes-kept"
        ),
    ],
)
def test_first_matching_rule_decides_then_the_method_list(
    method: str, path: str, expected: Decision
) -> None:
    assert POLICY.decide(method, path) == expected


@pytest.mark.parametrize(
    ("rule_path", "path", "matches"),
    [
        pytest.param("/slow", "/slow", True, id="the-prefix-itself"),
        pytest.param("/slow", "/slow/", True, id="with-a-trailing-slash"),
        pytest.param("/slow", "/slow/deeper/still", True, id="segments-under-it"),
        pytest.param("/slow", "/slowly", False, id="a-longer-word"),
        pytest.param("/slow", "/slow-delete-everything", False, id="a-longer-segment"),
        pytest.param("/slow", "/slo", False, id="shorter"),
        pytest.param("/slow", "/", False, id="the-root"),
        pytest.param("/slow", "/SLOW", False, id="case-sensitive"),
        pytest.param("/slow", "/slow%2Fx", False, id="an-escaped-slash-is-no-boundary"),
        pytest.param("/v1/chat", "/v1/chat/completions", True, id="two-segments"),
        pytest.param("/v1/chat", "/v1/chatter", False, id="two-segments-longer-word"),
        pytest.param("/api/", "/api/", True, id="slash-ended-itself"),
        pytest.param("/api/", "/api/users", True, id="slash-ended-under-it"),
        pytest.param("/api/", "/api", False, id="slash-ended-without-its-slash"),
        pytest.param("/api/", "/apiary", False, id="slash-ended-longer-word"),
        pytest.param("/", "/", True, id="root-matches-root"),
        pytest.param("/", "/anything/at/all", True, id="root-matches-everything"),
        pytest.param("/slow*", "/slowly", True, id="a-glob-stays-a-glob"),
        pytest.param("/v1/*/x", "/v1/a/b/x", True, id="glob-star-crosses-slashes"),
        pytest.param("/v1/?", "/v1/ab", False, id="glob-question-mark"),
    ],
)
def test_a_prefix_matches_whole_path_segments_and_a_glob_as_before(
    rule_path: str, path: str, matches: bool
) -> None:
    # Envoy's path_separated_prefix: the prefix ends where the path does or before a "/".
    assert parse_rule(f"{rule_path}=cancel", "r").matches("GET", path) is matches


@pytest.mark.parametrize(
    ("text", "described"),
    [
        pytest.param("POST /slow=cancel", "POST /slow=cancel", id="one-method"),
        pytest.param("head,GET /v1/*=grace=2.5", "GET,HEAD /v1/*=grace=2.5", id="methods-sorted"),
        pytest.param("/a=never", "/a=never", id="every-method"),
        pytest.param("* /a=grace=30", "/a=grace=30", id="star-is-every-method"),
    ],
)
def test_a_rule_describes_itself_as_a_rule_that_parses_back_to_it(
    text: str, described: str
) -> None:
    rule = parse_rule(text, "route-1")
    assert rule.describe() == described
    assert parse_rule(described, "route-1") == rule


def test_cancel_grace_applies_to_the_method_list() -> None:
    policy = RoutePolicy(default_grace=2.0)
    assert policy.decide("GET", "/x") == Decision(Action.GRACE, 2.0, "default")
    assert policy.decide("POST", "/x") == Decision(Action.NEVER, 0.0, "default")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("[[route]\n", "not valid TOML", id="toml"),
        pytest.param("[other]\nx = 1\n", "only \\[\\[route\\]\\] tables", id="other-table"),
        pytest.param('[[route]]\npath = "/a"\naction = "cancel"\nextra = 1\n', "keys", id="key"),
        pytest.param('[[route]]\npath = "/a"\naction = "soon"\n', "route 1", id="action"),
        pytest.param('[[route]]\npath = 3\naction = "cancel"\n', "strings", id="types"),
    ],
)
def test_a_bad_policy_file_says_where(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_policy_file(str(path))


def test_a_missing_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_policy_file(str(tmp_path / "absent.toml"))


# --- what each action does to a real hang-up ------------------------------------------------


class Held:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        await self.release.wait()
        return response_bytes(200, b"late")


async def hang_up_on(port: int, upstream: RawUpstream, method: str, target: str) -> None:
    client = await RawConnection.open(port)
    await client.send(request_bytes(method, target, [("X-Request-ID", "r")]))
    await upstream.wait_requests(1)
    client.hang_up("rst")


async def test_a_never_route_carries_a_get_to_the_end(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    held = Held()
    upstream.answer = held
    rules = parse_rules("GET /reports/=never")
    async with start_proxy(upstream.url, route_rules=rules) as proxy:
        with watch_logs() as logs:
            await hang_up_on(proxy.address.port, upstream, "GET", "/reports/big")
            held.release.set()
            line = await logs.wait_for("request")
        assert not upstream.connections[0].closed.is_set()  # answer read whole, pooled
    assert (line["outcome"], line["upstream_status"]) == ("client_hangup", 200)
    assert (line["policy_rule"], line["policy_action"]) == ("route-1", "never")


async def test_a_cancel_rule_for_a_prefix_does_not_reach_a_path_that_only_starts_like_it(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    held = Held()
    upstream.answer = held
    rules = parse_rules("POST /slow=cancel")
    async with start_proxy(upstream.url, route_rules=rules) as proxy:
        with watch_logs() as logs:
            await hang_up_on(proxy.address.port, upstream, "POST", "/slowly")
            held.release.set()
            line = await logs.wait_for("request")
        assert not upstream.connections[0].closed.is_set()  # carried to the end, pooled
    assert (line["policy_rule"], line["policy_action"]) == ("default", "never")


async def test_a_grace_route_that_answers_in_time_keeps_its_connection(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    held = Held()
    upstream.answer = held
    rules = parse_rules("/v1/=grace=30")
    async with start_proxy(upstream.url, route_rules=rules) as proxy:
        with watch_logs() as logs:
            await hang_up_on(proxy.address.port, upstream, "GET", "/v1/x")
            held.release.set()
            line = await logs.wait_for("request")
        assert not upstream.connections[0].closed.is_set()
    assert (line["policy_action"], line["grace_seconds"], line["upstream_closed"]) == (
        "grace",
        30.0,
        False,
    )


async def test_a_grace_route_that_is_too_slow_is_cut_when_the_grace_ends(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = Held()
    rules = parse_rules("POST /v1/=grace=0.2")
    async with start_proxy(upstream.url, route_rules=rules) as proxy:
        with watch_logs() as logs:
            await hang_up_on(proxy.address.port, upstream, "POST", "/v1/x")
            line = await logs.wait_for("request")
            await upstream.wait_until(lambda: upstream.closed_count() == 1)
    assert (line["outcome"], line["upstream_closed"], line["policy_rule"]) == (
        "client_hangup",
        True,
        "route-1",
    )
    assert line["duration_ms"] >= 200


async def test_a_cancel_route_closes_a_post_at_once(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = Held()
    rules = parse_rules("POST /v1/chat/*=cancel")
    async with start_proxy(upstream.url, route_rules=rules) as proxy:
        await hang_up_on(proxy.address.port, upstream, "POST", "/v1/chat/completions")
        await upstream.wait_until(lambda: upstream.closed_count() == 1)
        samples = {
            (sample.labels["rule"], sample.labels["action"]): sample.value
            for metric in proxy.metrics.registry.collect()
            if metric.name == "hangup_policy_decisions"
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
    assert samples == {("route-1", "cancel"): 1.0}


async def test_a_client_deadline_gives_504_and_closes_the_upstream(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = Held()
    async with start_proxy(upstream.url, deadline_header="Request-Timeout") as proxy:
        client = await RawConnection.open(proxy.address.port)
        with watch_logs() as logs:
            await client.send(request_bytes("GET", "/", [("Request-Timeout", "0.2")]))
            response = await client.read_response()
            line = await logs.wait_for("request")
        await upstream.wait_until(lambda: upstream.closed_count() == 1)
        await client.close()
    assert response.status == 504
    assert (line["outcome"], line["reason"]) == ("upstream_timeout", "client_deadline")
    assert upstream.requests[0].header("Request-Timeout") == "0.2"


async def test_a_client_deadline_is_capped_by_the_upstream_timeout(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.answer = Held()
    async with start_proxy(
        upstream.url, deadline_header="Request-Timeout", upstream_timeout=0.2
    ) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/", [("Request-Timeout", "3600")]))
        response = await client.read_response()
        await client.close()
    assert response.status == 504


async def test_without_the_flag_a_deadline_header_is_just_forwarded(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(upstream.url) as proxy:
        client = await RawConnection.open(proxy.address.port)
        await client.send(request_bytes("GET", "/", [("Request-Timeout", "0.000001")]))
        response = await client.read_response()
        await client.close()
    assert response.status == 200


INVALID_DEADLINES = ("abc", "-1", "0", "inf", "nan", "")


async def test_an_invalid_deadline_is_ignored_but_counted_and_logged_at_debug(
    upstream: RawUpstream, start_proxy: ProxyFactory
) -> None:
    async with start_proxy(
        upstream.url, deadline_header="Request-Timeout", admin=HostPort(LOOPBACK, 0)
    ) as proxy:
        assert proxy.admin_address is not None
        before = await scrape(proxy.admin_address.port)
        statuses = []
        with watch_logs() as logs:
            sent = [[("Request-Timeout", value)] for value in INVALID_DEADLINES]
            # Neither a good value nor no header at all leaves a trace.
            sent += [[("Request-Timeout", "2.5")], []]
            for number, fields in enumerate(sent):
                client = await RawConnection.open(proxy.address.port)
                request_id = f"r-{number}"
                await client.send(
                    request_bytes("GET", "/", [("X-Request-ID", request_id), *fields])
                )
                statuses.append((await client.read_response()).status)
                await client.close()
                await logs.wait_for("request", request_id=request_id)
        after = await scrape(proxy.admin_address.port)

    assert statuses == [200] * len(sent)  # ignored: forwarded as if the header were absent
    assert before.value("hangup_invalid_deadline_headers_total") == 0
    assert after.value("hangup_invalid_deadline_headers_total") == len(INVALID_DEADLINES)
    logged = logs.events("deadline_header_invalid")
    assert [(line["header"], line["value"], line["log_level"]) for line in logged] == [
        ("Request-Timeout", value, "debug") for value in INVALID_DEADLINES
    ]


async def test_the_real_proxy_logs_an_invalid_deadline_with_the_request_id_and_counts_it(
    upstream: RawUpstream,
) -> None:
    # The script, not capture_logs: the request id reaches the line through the context that
    # Forwarder.handle binds, which only the configured pipeline merges.
    argv = proxy_argv(upstream.url, "--deadline-header", "Request-Timeout", "--log-level", "debug")
    async with running_script(argv, "proxy_listening") as (proxy, port):
        admin_port = await proxy.listening_port("admin_listening")
        client = await RawConnection.open(port)
        await client.send(
            request_bytes(
                "GET", "/", [("X-Request-ID", "bad-deadline"), ("Request-Timeout", "abc")]
            )
        )
        response = await client.read_response()
        await client.close()
        line = await proxy.wait_for_event("deadline_header_invalid", request_id="bad-deadline")
        await proxy.wait_for_event("request", request_id="bad-deadline")
        metrics = await scrape(admin_port)
    assert response.status == 200
    assert (line["level"], line["header"], line["value"]) == ("debug", "Request-Timeout", "abc")
    assert metrics.value("hangup_invalid_deadline_headers_total") == 1
