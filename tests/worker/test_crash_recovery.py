"""A worker process killed with SIGKILL: its task runs again on another worker; its hook commits once."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.worker.conftest import FAST, enqueue, events, running_worker, runs, seconds, task, wait_for

Db = psycopg.Connection[dict[str, Any]]
REPO = Path(__file__).resolve().parents[2]
ANCHOR = str(Path(sys.executable).parent / "anchor")
# the surviving worker: a killed worker counts as dead after 2 s of silence, checked every 0.5 s
RESCUING = dataclasses.replace(FAST, heartbeat_interval=seconds(0.5), heartbeat_timeout=seconds(2),
                               rescue_interval=seconds(0.5))


def start_worker_process(dsn: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ANCHOR, "worker", "--app", "tests.worker.app:make_executor",
         "--taskgen", "tests.worker.app", "--dsn", dsn, "--heartbeat-interval", "500ms",
         "--heartbeat-timeout", "2s", "--rescue-interval", "500ms", "--poll-interval", "500ms", *extra],
        cwd=REPO, env={**os.environ, "ANCHOR_TEST_DSN": dsn}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_sync(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_sigkill_mid_task_another_worker_finishes_it_within_30s(dsn: str, app_db: Db) -> None:
    """Done when: SIGKILL of a worker mid-task: another worker finishes the task within 30 s."""
    task_id = enqueue(app_db, "Work", {"userId": 1, "mode": "sleep_first", "sleep": 600},
                      retry_intervals=["1 second"], max_attempts=3)
    victim = start_worker_process(dsn)
    try:
        _wait_sync(lambda: bool(runs(app_db, task_id)), 20)
        assert runs(app_db, task_id)[0]["worker_pid"] == victim.pid
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = time.monotonic()
    finally:
        victim.kill()

    async def survivor() -> None:
        async with running_worker(dsn, RESCUING):
            await wait_for(lambda: task(app_db, task_id)["state"] == "succeeded", 30)

    asyncio.run(survivor())
    assert time.monotonic() - killed_at < 30
    executions = runs(app_db, task_id, "execute")
    assert [r["attempt"] for r in executions] == [1, 2]
    assert executions[1]["worker_pid"] == os.getpid()
    rescued = [e for e in events(app_db, task_id) if e["kind"] == "rescued"]
    assert len(rescued) == 1 and rescued[0]["message"] == "worker stopped heartbeating"


def test_sigkill_during_the_hook_transaction_the_hook_commits_exactly_once_later(dsn: str, app_db: Db) -> None:
    """Done when: SIGKILL during the hook transaction: the hook commits exactly once later."""
    task_id = enqueue(app_db, "Flaky", {"userId": 5, "mode": "hook_sleep_first", "sleep": 600}, max_attempts=1)
    victim = start_worker_process(dsn)
    try:
        _wait_sync(lambda: bool(runs(app_db, task_id, "hook")), 20)
        time.sleep(0.3)  # inside the hook now, its transaction (finish_failure + the hook's writes) open
        assert task(app_db, task_id)["state"] == "failing"
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        victim.kill()

    async def survivor() -> None:
        async with running_worker(dsn, RESCUING):
            await wait_for(lambda: task(app_db, task_id)["state"] == "failed", 30)
            await asyncio.sleep(1)

    asyncio.run(survivor())
    row = task(app_db, task_id)
    assert (row["state"], row["hook_attempts"]) == ("failed", 2)
    assert len(runs(app_db, task_id, "hook")) == 2
    log = app_db.execute("select note from hook_log where task_id = %s", (task_id,)).fetchall()
    assert len(log) == 1  # the killed attempt's write rolled back with its transaction
    assert [e["kind"] for e in events(app_db, task_id)].count("failed") == 1
