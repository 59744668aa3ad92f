"""The proxy's Prometheus metrics: one private registry per proxy, filled once per exchange.

Each running proxy owns a ``CollectorRegistry`` of its own (never the process-global default), so
several proxies in one process (the tests) keep separate counts. The hot path counts in plain
integers: ``started`` when an exchange begins and ``finished`` at the one place every exchange
ends, next to its canonical log line; they reach prometheus-client when the registry is collected
(``ProxyMetrics``). Names follow Prometheus conventions (cancellation-facts §7):
the ``hangup_`` prefix, base units (seconds), ``_total`` counters, and only small fixed label sets,
never a path or an id.

With ``--workers N`` each worker runs with ``PROMETHEUS_MULTIPROC_DIR`` set by its supervisor, so
prometheus-client keeps these values in files the supervisor sums (``proxy.workers.supervisor``).
Two things change for that: the gauge's ``multiprocess_mode``, which a single process ignores, and
the plain counts, added to the files at once because the supervisor reads them from its own
process.

No ``_created`` series: prometheus-client adds one to every counter and histogram (and to each of
their label children), a start time no dashboard of ours reads that doubles the lines of a scrape.
Every registry of hangup, a proxy's or a supervisor's, is made by ``new_registry``, which turns
them off (issue 14). The multiprocess collector never writes them.
"""

from __future__ import annotations

import bisect
import os
import platform
import time
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.metrics_core import Metric

from proxy.exchange.state import Exchange, Outcome, Phase
from proxy.observability.provenance import hangup_version

# A hang-up travels from the handler's cancellation to a closed socket within one loop turn or a
# few: sub-millisecond buckets, with a tail for a loop that is busy.
CANCEL_PROPAGATION_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
# A WebSocket session lasts from seconds to hours.
WEBSOCKET_DURATION_BUCKETS = (
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
)  # fmt: skip
REQUEST_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Read by prometheus-client when a worker imports it; set only in the workers' environment
(``proxy.workers.supervisor``)."""

ABORTED = "aborted"
"""The ``outcome`` label of an exchange that ended with no recorded outcome: the proxy itself cut
it, e.g. when the drain timeout ran out at shutdown."""

UPSTREAM_CONNECT_FAILED = "upstream_connect_failed"
REJECTION_REASONS = ("unsupported_expectation", "bad_request_body")
"""Why the proxy refused to forward a request (``Outcome.CLIENT_ERROR`` reasons)."""
OTHER = "other"
_COMPLETED = Outcome.COMPLETED  # a global is cheaper than an enum member's look-up (hot path)


def register_build_info(registry: CollectorRegistry) -> None:
    """``hangup_build_info``: the version and Python of the process that serves /metrics."""
    Info("hangup_build", "The running hangup build.", registry=registry).info(
        {"version": hangup_version(), "python": platform.python_version()}
    )


def new_registry(*, auto_describe: bool = False) -> CollectorRegistry:
    """A registry of our own, exported without ``_created`` series (see the module docstring)."""
    # The switch is one module-wide flag of prometheus-client's, read at each scrape; setting it
    # again is harmless. Set here rather than at import so that it is visibly tied to our
    # registries (the same process's default registry, if anyone used it, loses them too).
    # prometheus-client leaves this function unannotated (it ships py.typed regardless).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    return CollectorRegistry(auto_describe=auto_describe)


class _CountsFirst:
    """A collector that yields nothing: collected first, it adds the hot path's plain counts to
    the real metrics just before the registry reads them (``ProxyMetrics``)."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        self._metrics.add_counts()
        return ()

    def describe(self) -> Iterable[Metric]:
        return ()


class ProxyMetrics:
    """Every metric of one proxy, in its own ``registry``.

    The three series every exchange touches (``hangup_active_requests``, the completed requests,
    the request-duration histogram) are counted in plain integers on the hot path and added to
    prometheus-client's values when the registry is collected: four of its calls a request, each
    taking a lock and the histogram a Python loop over its buckets, cost about 22 k instructions
    (issue 16). A scrape therefore sees every exchange that ended before it. With ``--workers``
    the values live in files that the supervisor reads from another process, so there each
    exchange's counts are added at once (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor).
    """

    def __init__(self) -> None:
        self.registry = new_registry(auto_describe=True)
        registry = self.registry
        # Registered first, so collected first (the registry keeps registration order).
        registry.register(_CountsFirst(self))
        self._counts_at_once = MULTIPROC_DIR_ENV in os.environ
        self._active = 0
        self._completed_count = 0
        self._durations = 0
        self._duration_sum = 0.0
        self._duration_buckets = [0] * (len(REQUEST_DURATION_BUCKETS) + 1)  # and +Inf
        requests = Counter(
            "hangup_requests",
            "Requests that ended, by outcome (completed, client_hangup, upstream_error, "
            "upstream_timeout, client_error, aborted).",
            ["outcome"],
            registry=registry,
        )
        disconnects = Counter(
            "hangup_client_disconnects",
            "Clients that hung up before their answer was complete, by where the exchange was.",
            ["phase"],
            registry=registry,
        )
        # Named hangup_hangup_decisions before issue 14; the stutter is gone, the labels kept.
        self.hangup_policy = Counter(
            "hangup_policy_decisions",
            "Hang-ups by the policy rule that decided them (default, route-N, file-N) and its "
            "action (cancel, never, grace).",
            ["rule", "action"],
            registry=registry,
        )
        self.upstream_cancellations = Counter(
            "hangup_upstream_cancellations",
            "Upstream connections the proxy closed because their client hung up.",
            registry=registry,
        )
        self.cancel_propagation = Histogram(
            "hangup_cancel_propagation_seconds",
            "From the proxy learning that the client left to the upstream connection being closed.",
            buckets=CANCEL_PROPAGATION_BUCKETS,
            registry=registry,
        )
        self.request_duration = Histogram(
            "hangup_request_duration_seconds",
            "From a request's arrival to the end of its exchange, whatever the outcome.",
            buckets=REQUEST_DURATION_BUCKETS,
            registry=registry,
        )
        self.active_requests = Gauge(
            "hangup_active_requests",
            "Exchanges in progress, including writes carried to the end after a hang-up.",
            registry=registry,
            # Across workers: the sum over the processes alive now (a dead worker's are gone).
            multiprocess_mode="livesum",
        )
        self.open_websockets = Gauge(
            "hangup_websocket_sessions",
            "WebSocket sessions open now, from the handshake to the tunnel's end (not counted in "
            "hangup_active_requests).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.websocket_duration = Histogram(
            "hangup_websocket_session_duration_seconds",
            "From a WebSocket handshake's arrival to the end of its tunnel (not counted in "
            "hangup_request_duration_seconds).",
            buckets=WEBSOCKET_DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_connect_errors = Counter(
            "hangup_upstream_connect_errors",
            "Requests answered 502 because the upstream refused or did not accept a connection.",
            registry=registry,
        )
        self.upstream_timeouts = Counter(
            "hangup_upstream_timeouts",
            "Requests whose upstream was silent past --upstream-timeout.",
            registry=registry,
        )
        self._invalid_deadlines = Counter(
            "hangup_invalid_deadline_headers",
            "Requests whose --deadline-header held no positive number of seconds; the value was "
            "ignored, as if the header were absent.",
            registry=registry,
        )
        self._rejected_counter = rejected = Counter(
            "hangup_rejected_requests",
            "Requests the proxy refused to forward, by reason.",
            ["reason"],
            registry=registry,
        )
        register_build_info(registry)
        # Children made up front: every label value is exported from the start (as 0), and the
        # hot path does a dict look-up instead of ``labels()``.
        self._requests = {name: requests.labels(name) for name in [*Outcome, ABORTED]}
        self._completed = self._requests[_COMPLETED]
        self._disconnects = {phase: disconnects.labels(phase) for phase in Phase}
        self._rejected = {reason: rejected.labels(reason) for reason in [*REJECTION_REASONS, OTHER]}

    def started(self) -> None:
        self._active += 1
        if self._counts_at_once:
            self.add_counts()

    def finished(self, exchange: Exchange) -> None:
        """Record one ended exchange; called exactly once per exchange, after ``started``."""
        self._active -= 1
        duration = time.perf_counter() - exchange.started
        self._durations += 1
        self._duration_sum += duration
        # The first bucket whose upper bound is >= the duration, as Histogram.observe picks it.
        self._duration_buckets[bisect.bisect_left(REQUEST_DURATION_BUCKETS, duration)] += 1
        if exchange.outcome is _COMPLETED:
            self._completed_count += 1  # nearly every request: no _count_outcome (issue 16)
        else:
            self._count_outcome(exchange)
        if self._counts_at_once:
            self.add_counts()

    def add_counts(self) -> None:
        """Add the plain counts kept since the last call to prometheus-client's values."""
        if self._active:
            self.active_requests.inc(self._active)
            self._active = 0
        if self._completed_count:
            self._completed.inc(self._completed_count)
            self._completed_count = 0
        if self._durations:
            histogram = self.request_duration
            # Histogram.observe's own values (prometheus-client keeps one per bucket, not
            # cumulative, and the sum): there is no public call that adds n observations at once.
            for index, count in enumerate(self._duration_buckets):
                if count:
                    histogram._buckets[index].inc(count)
                    self._duration_buckets[index] = 0
            histogram._sum.inc(self._duration_sum)
            self._durations = 0
            self._duration_sum = 0.0

    def websocket_opened(self) -> None:
        self.open_websockets.inc()

    def websocket_closed(self, session: Exchange) -> None:
        """Record one ended WebSocket session, after ``websocket_opened``.

        Its outcome counts with the requests' (``hangup_requests_total`` and the hang-up
        counters); its length and its being open are kept apart, so hours-long sessions neither
        skew the request-duration histogram nor look like requests in flight.
        """
        self.open_websockets.dec()
        self.websocket_duration.observe(time.perf_counter() - session.started)
        self._count_outcome(session)

    def _count_outcome(self, exchange: Exchange) -> None:
        outcome = exchange.outcome
        self._requests[ABORTED if outcome is None else outcome].inc()
        if outcome is Outcome.CLIENT_HANGUP:
            self._disconnects[exchange.phase].inc()
            decision = exchange.decision
            self.hangup_policy.labels(decision.rule, decision.action).inc()
            if exchange.upstream_closed:
                self.upstream_cancellations.inc()
                propagation = exchange.cancel_propagation()
                if propagation is not None:
                    self.cancel_propagation.observe(propagation)
        elif outcome is Outcome.UPSTREAM_TIMEOUT:
            self.upstream_timeouts.inc()
        elif outcome is Outcome.UPSTREAM_ERROR and exchange.reason == UPSTREAM_CONNECT_FAILED:
            self.upstream_connect_errors.inc()
        elif outcome is Outcome.CLIENT_ERROR:
            self.rejected(exchange.reason or OTHER)

    def invalid_deadline_header(self) -> None:
        self._invalid_deadlines.inc()

    def rejected(self, reason: str) -> None:
        """Count one refusal. Reasons are the gate's own constants, so the label set is bounded."""
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self._rejected_counter.labels(reason)
        child.inc()
