"""/metrics of a supervisor: every worker's metrics summed, and the supervisor's own.

prometheus-client's multiprocess mode (its documented way to run behind gunicorn-style workers):
each worker, started with ``PROMETHEUS_MULTIPROC_DIR`` pointing at a private directory the
supervisor created, keeps its values in memory-mapped files there, one per process and metric type;
the supervisor's ``MultiProcessCollector`` reads them all on each scrape. Counters and histograms
are summed over every worker that ever ran, dead ones included, so a restart never makes a counter
go backwards; ``hangup_active_requests`` is summed over the live workers only (``livesum``), which
is why a worker that exits is marked dead. The directory lives as long as the supervisor.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import Counter, Gauge, multiprocess

from proxy.observability.metrics import new_registry, register_build_info


class SupervisorMetrics:
    """The supervisor's registry: the workers' files, its own worker counts, and the build."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.registry = new_registry()
        # prometheus-client's multiprocess module has no annotations (it ships py.typed regardless).
        multiprocess.MultiProcessCollector(self.registry, path=str(directory))  # type: ignore[no-untyped-call]
        self.workers_listening = Gauge(
            "hangup_workers_listening",
            "Worker processes whose client listener is up.",
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "hangup_worker_restarts",
            "Workers started again after one exited while the supervisor was not draining.",
            registry=self.registry,
        )
        register_build_info(self.registry)

    def worker_exited(self, pid: int) -> None:
        """Drop the dead worker's live gauges; its counters stay in the sums."""
        multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]
