"""`anchor register` and `anchor worker` as a user runs them: subprocesses against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.worker.app import TASKS, TEST_TABLES
from tests.worker.conftest import enqueue, events, runs, task

REPO = Path(__file__).resolve().parents[2]
ANCHOR = str(Path(sys.executable).parent / "anchor")
Db = psycopg.Connection[dict[str, Any]]


def anchor(*args: str, dsn: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANCHOR, *args], cwd=REPO, env={**os.environ, "ANCHOR_TEST_DSN": dsn},
                          capture_output=True, text=True, timeout=60, **kwargs)


def start_worker(dsn: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ANCHOR, "worker", "--app", "tests.worker.app:make_executor", "--taskgen", "tests.worker.app",
         "--dsn", dsn, "--poll-interval", "200ms", "--log-format", "json", "--log-level", "DEBUG", *extra],
        cwd=REPO, env={**os.environ, "ANCHOR_TEST_DSN": dsn}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_register_lets_an_app_enqueue_before_any_worker_ran(dsn: str, db: Db) -> None:
    result = anchor("register", "--taskgen", "tests.worker.app", "--dsn", dsn, dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"anchor: {len(TASKS)} task definitions, version 1: applied"
    assert anchor("register", "--taskgen", "tests.worker.app", "--dsn", dsn, dsn=dsn).stdout.endswith("unchanged\n")
    assert enqueue(db, "Work", {"userId": 1}) > 0


def test_register_without_a_generated_module_is_a_usage_error(dsn: str) -> None:
    result = anchor("register", "--taskgen", "no_such_module.taskgen", "--dsn", dsn, dsn=dsn)
    assert result.returncode == 2
    assert "cannot import the generated module 'no_such_module.taskgen'" in result.stderr


def test_worker_runs_tasks_logs_json_and_sigterm_hands_back_unfinished_work(dsn: str, db: Db) -> None:
    db.execute(TEST_TABLES)
    assert anchor("register", "--taskgen", "tests.worker.app", "--dsn", dsn, dsn=dsn).returncode == 0
    quick = enqueue(db, "Work", {"userId": 1})
    flaky = enqueue(db, "Flaky", {"userId": 2, "mode": "fatal"})
    slow = enqueue(db, "Work", {"userId": 3, "sleep": 60})
    worker = start_worker(dsn, "--shutdown-grace", "1s")
    try:
        wait_until(lambda: task(db, flaky)["state"] == "failed" and bool(runs(db, slow)), 20)
        assert task(db, quick)["state"] == "succeeded"
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=15)
    finally:
        worker.kill()
    assert worker.returncode == 0, stderr
    # the slow task went back to pending with its attempt given back; the worker left
    row = task(db, slow)
    assert (row["state"], row["attempts"], row["locked_by"]) == ("pending", 0, None)
    assert [e["kind"] for e in events(db, slow)] == ["handed_back"]
    assert db.execute("select count(*) as n from anchor.workers").fetchone() == {"n": 0}
    # one JSON object per line; transitions carry the task's fields
    lines = json_lines(stderr)
    by_outcome = {line.get("outcome"): line for line in lines if line.get("task_id") in (quick, flaky, slow)}
    assert by_outcome["succeeded"]["task_id"] == quick
    failing = by_outcome["failing"]
    assert (failing["task_id"], failing["task_name"], failing["attempt"]) == (flaky, "Flaky", 1)
    assert failing["level"] == "warning" and isinstance(failing["duration_ms"], float)
    assert by_outcome["failed"]["hook_attempt"] == 1  # the hook committed with the failure
    assert by_outcome["handed_back_pending"]["task_id"] == slow


def test_worker_with_a_bad_app_is_a_usage_error(dsn: str) -> None:
    result = anchor("worker", "--app", "tests.worker.app", "--taskgen", "tests.worker.app", "--dsn", dsn, dsn=dsn)
    assert result.returncode == 2
    assert "--app must look like module:factory" in result.stderr


def test_worker_durations_are_duration_strings_and_a_bad_one_names_its_option(dsn: str) -> None:
    result = anchor("worker", "--app", "tests.worker.app:make_executor", "--taskgen", "tests.worker.app",
                    "--dsn", dsn, "--heartbeat-timeout", "20", dsn=dsn)
    assert result.returncode == 2
    assert result.stderr == (
        "anchor worker: --heartbeat-timeout: '20' is not a duration (expected e.g. 500ms, 20s, 1m30s)\n"
    )
    result = anchor("worker", "--app", "tests.worker.app:make_executor", "--taskgen", "tests.worker.app",
                    "--dsn", dsn, "--heartbeat-interval", "30s", dsn=dsn)  # longer than the 20s timeout
    assert result.returncode == 2
    assert "heartbeat_timeout must be longer than heartbeat_interval" in result.stderr
