"""`anchor worker --metrics-port`: a user scrapes the worker's Prometheus endpoint after a few tasks ran."""

from __future__ import annotations

import signal
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.acceptance.test_worker_cli import start_worker, wait_until  # noqa: E402
from tests.worker.app import TASKS, TEST_TABLES  # noqa: E402
from tests.worker.conftest import enqueue, task  # noqa: E402

Db = psycopg.Connection[dict[str, Any]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_worker_metrics_port_serves_executions_claims_and_database_gauges(dsn: str, db: Db) -> None:
    db.execute(TEST_TABLES)
    db.execute("select anchor.register_tasks(%s::jsonb, %s)", (TASKS.definitions_json(), TASKS.version))
    ids = [enqueue(db, "Work", {"userId": i}) for i in range(3)]
    port = free_port()
    worker = start_worker(dsn, "--metrics-port", str(port), "--metrics-database")
    try:
        wait_until(lambda: all(task(db, i)["state"] == "succeeded" for i in ids), 30)
        values: dict[Any, float] = {}

        def recorded() -> bool:
            nonlocal values
            values = scrape(port) or {}
            return values.get(("anchor_worker_executions_total", (("name", "Work"), ("outcome", "succeeded")))) == 3

        wait_until(recorded, 10)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert values[("anchor_worker_execution_duration_seconds_count", (("name", "Work"), ("outcome", "succeeded")))] == 3
    assert values[("anchor_worker_claim_batch_size_sum", ())] == 3
    assert values[("anchor_tasks", (("name", "Work"), ("state", "succeeded")))] == 3  # --metrics-database
    assert values[("anchor_database_up", ())] == 1
    time.sleep(0.2)
    assert scrape(port) is None  # the endpoint stops with the worker


def test_worker_metrics_port_out_of_range_is_a_usage_error(dsn: str, db: Db) -> None:
    worker = start_worker(dsn, "--metrics-port", "70000")
    _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 2
    assert "--metrics-port must be a TCP port" in stderr
