"""Prometheus metrics.

Two kinds, kept apart so each is counted once:

* Measured in the worker process (only the worker sees them): executions by task name and outcome, their
  duration, and how many tasks each claim returned. `WorkerMetrics` holds the metric objects in their own
  registry; the worker records into them (`record_execution`, `record_claim`) and
  `start_metrics_server(port)` serves them for `anchor worker --metrics-port` (docs/operations.md, Metrics).
* Read from the database at scrape time (true for the whole system, whichever process serves them): tasks
  per name and state, queue depth and oldest due pending age per queue, workers alive.
  `DatabaseCollector` reads them through anchor_py.admin; the dashboard's /metrics serves it, and
  `start_metrics_server(port, dsn=...)` can add it to a worker's endpoint too.

Needs the `dashboard` extra (prometheus-client).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from anchor_py import admin
from anchor_py.db import ConnectionSource
from anchor_py.defaults import HEARTBEAT_TIMEOUT

# Execution durations: from a no-op (sub-millisecond) to the default 1h timeout.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)
CLAIM_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

# The outcomes the worker records (as anchor.complete / anchor.fail / the hook path report them).
OUTCOMES = ("succeeded", "retry", "failing", "failed", "cancelled", "hook_failed", "stale", "handed_back")


class WorkerMetrics:
    """The metrics a worker process measures, in their own registry (so tests and several workers in one
    process do not collide with prometheus_client's global one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.executions = Counter(
            "anchor_worker_executions",
            "Task executions finished by this worker process, by task name and outcome "
            "(succeeded, retry, failing, failed, cancelled, stale, ...).",
            ["name", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "anchor_worker_execution_duration_seconds",
            "Wall time of task executions in this worker process, by task name and outcome.",
            ["name", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.claim_batch = Histogram(
            "anchor_worker_claim_batch_size",
            "Tasks (executions and hooks) returned by each anchor.claim call of this worker process.",
            buckets=CLAIM_BUCKETS,
            registry=self.registry,
        )
        self.hooks = Counter(
            "anchor_worker_hooks",
            "onFailed hook runs in this worker process, by task name and outcome (failed = hook done, "
            "retry / hook_failed = the hook raised).",
            ["name", "outcome"],
            registry=self.registry,
        )

    def record_execution(self, name: str, outcome: str, seconds: float) -> None:
        """One execution ended: `outcome` as the SQL core reported it, `seconds` of wall time."""
        self.executions.labels(name, outcome).inc()
        self.duration.labels(name, outcome).observe(seconds)

    def record_claim(self, claimed: int) -> None:
        """One claim returned `claimed` work rows (execute + hook; the wake row not counted)."""
        self.claim_batch.observe(claimed)

    def record_hook(self, name: str, outcome: str) -> None:
        self.hooks.labels(name, outcome).inc()


# The worker process's metrics: record into these.
WORKER = WorkerMetrics()


def record_execution(name: str, outcome: str, seconds: float) -> None:
    WORKER.record_execution(name, outcome, seconds)


def record_claim(claimed: int) -> None:
    WORKER.record_claim(claimed)


def record_hook(name: str, outcome: str) -> None:
    WORKER.record_hook(name, outcome)


class DatabaseCollector(Collector):
    """System-wide gauges read from the database at each scrape (one short read-only transaction)."""

    def __init__(
        self, connection: ConnectionSource, *, heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT
    ) -> None:
        self.connection = connection
        self.heartbeat_timeout = heartbeat_timeout

    def describe(self) -> list[Metric]:
        # no database reads at registration time
        return []

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "anchor_tasks", "Tasks in the table by task name and state (outcome, for finished ones).",
            labels=["name", "state"],
        )
        depth = GaugeMetricFamily("anchor_queue_depth", "Pending tasks per queue (due now or later).",
                                  labels=["queue"])
        due = GaugeMetricFamily("anchor_queue_due", "Pending tasks per queue that are due now.", labels=["queue"])
        oldest = GaugeMetricFamily(
            "anchor_queue_oldest_pending_age_seconds",
            "How long the oldest due pending task of each queue has been waiting (0 when none is due).",
            labels=["queue"],
        )
        running = GaugeMetricFamily("anchor_queue_running", "Running tasks per queue.", labels=["queue"])
        workers = GaugeMetricFamily("anchor_workers_alive", "Workers that heartbeated within the timeout.")
        registered = GaugeMetricFamily("anchor_workers_registered", "Worker rows in anchor.workers.")
        up = GaugeMetricFamily("anchor_database_up", "1 when the last scrape could read the database.")
        try:
            with self.connection() as conn:
                stats = admin.get_stats(conn, minutes=1, heartbeat_timeout=self.heartbeat_timeout)
        except psycopg.Error:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for name, counts in sorted(stats.table().items()):
            for state, n in counts.items():
                tasks.add_metric([name, state], n)
        for q in stats.queues:
            depth.add_metric([q.queue], q.pending)
            due.add_metric([q.queue], q.due)
            oldest.add_metric([q.queue], q.oldest_due_seconds or 0.0)
            running.add_metric([q.queue], q.running)
        workers.add_metric([], stats.workers_alive)
        registered.add_metric([], len(stats.workers))
        yield from (up, tasks, depth, due, oldest, running, workers, registered)


def database_registry(connection: ConnectionSource, **kwargs: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(connection, **kwargs))
    return registry


class _Both(Collector):
    def __init__(self, *registries: CollectorRegistry) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Metric]:
        for registry in self.registries:
            yield from registry.collect()


def start_metrics_server(
    port: int, addr: str = "127.0.0.1", *, dsn: str | None = None, metrics: WorkerMetrics | None = None
) -> Callable[[], None]:
    """Serves the worker's metrics on http://addr:port/metrics in a background thread (for
    `anchor worker --metrics-port`); with `dsn`, the database gauges too. Returns a function that stops it."""
    registry = CollectorRegistry(auto_describe=False)
    parts = [(metrics or WORKER).registry]
    if dsn is not None:
        parts.append(database_registry(lambda: psycopg.connect(dsn, autocommit=True, connect_timeout=5)))
    registry.register(_Both(*parts))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    lock = threading.Lock()

    def stop() -> None:
        with lock:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    return stop
