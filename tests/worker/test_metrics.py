"""The worker records into its metric objects, and `start_metrics_server` serves them."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from typing import Any

import psycopg
import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from anchor_py.metrics import WorkerMetrics, start_metrics_server  # noqa: E402
from anchor_py.worker import Worker  # noqa: E402
from tests.worker.app import TASKS, Executor  # noqa: E402
from tests.worker.conftest import FAST, enqueue, task, wait_for  # noqa: E402

Db = psycopg.Connection[dict[str, Any]]
Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Values:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_worker_records_executions_hooks_and_claims_and_the_endpoint_serves_them(dsn: str, app_db: Db) -> None:
    ok = [enqueue(app_db, "Work", {"userId": i}) for i in range(4)]
    fatal = enqueue(app_db, "Flaky", {"userId": 9, "mode": "fatal"})  # fails at once, then its hook runs
    metrics = WorkerMetrics()
    port = free_port()
    stop = start_metrics_server(port, metrics=metrics)

    async def scenario() -> None:
        worker = Worker(dsn, Executor(dsn), TASKS, FAST, metrics=metrics)
        runner = asyncio.create_task(worker.run())
        try:
            await wait_for(lambda: all(task(app_db, i)["state"] == "succeeded" for i in ok)
                           and task(app_db, fatal)["state"] == "failed", 15)
        finally:
            await worker.stop()
            await runner

    try:
        asyncio.run(scenario())
        values = scrape(port)
    finally:
        stop()
    succeeded = (("name", "Work"), ("outcome", "succeeded"))
    assert values[("anchor_worker_executions_total", succeeded)] == 4
    assert values[("anchor_worker_execution_duration_seconds_count", succeeded)] == 4
    assert 0 < values[("anchor_worker_execution_duration_seconds_sum", succeeded)] < 15
    assert values[("anchor_worker_executions_total", (("name", "Flaky"), ("outcome", "failing")))] == 1
    assert values[("anchor_worker_hooks_total", (("name", "Flaky"), ("outcome", "failed")))] == 1
    # every claim is observed, empty ones included; together they returned the 5 tasks
    assert values[("anchor_worker_claim_batch_size_sum", ())] == 5
    assert values[("anchor_worker_claim_batch_size_count", ())] >= 1


def test_without_metrics_the_worker_records_nothing(dsn: str, app_db: Db) -> None:
    ids = [enqueue(app_db, "Work", {"userId": i}) for i in range(3)]
    worker = Worker(dsn, Executor(dsn), TASKS, FAST)
    assert worker.metrics is None

    async def scenario() -> None:
        await worker.run_until_empty(timeout=15)

    asyncio.run(scenario())
    assert all(task(app_db, i)["state"] == "succeeded" for i in ids)
    assert worker._completions.recorded_durations == 0  # nothing kept per task for metrics
