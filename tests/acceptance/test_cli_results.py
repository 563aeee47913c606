"""Results and progress as an operator sees them: `anchor tasks show`, `anchor tasks wait` and its exit codes
(0 succeeded, 5 failed, 6 cancelled, 7 timeout, 4 no such task), and the dashboard's task page."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.acceptance.test_cli_tasks import anchor
from tests.sql.factories import WORKER, definition, enqueue, heartbeat, register

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def job(db: Conn) -> None:
    register(db, definition("Job"))


def claim_fence(db: Conn, task_id: int) -> int:
    heartbeat(db)
    rows = db.execute("select id, fence from anchor.claim_v2(%s, 10) where kind = 'execute'", (WORKER,)).fetchall()
    return int({row["id"]: row["fence"] for row in rows}[task_id])


def succeed_with(db: Conn, task_id: int, fence: int, result: dict[str, Any]) -> None:
    with db.transaction():
        db.execute(
            "select anchor.record_results(%s, %s, %s::jsonb[], %s)", ([task_id], [fence], [Jsonb(result)], WORKER)
        )
        db.execute("select anchor.complete_v2(%s, %s, %s)", ([task_id], [fence], WORKER))


def test_show_prints_progress_while_running_and_the_result_after(dsn: str, db: Conn, job: None) -> None:
    task_id = enqueue(db, "Job")
    fence = claim_fence(db, task_id)
    db.execute(
        "select anchor.set_progress(%s, %s, %s, %s)", (task_id, fence, WORKER, Jsonb({"done": 40, "total": 100}))
    )
    assert 'progress      {"done": 40, "total": 100}' in anchor("tasks", "show", str(task_id), dsn=dsn).stdout
    succeed_with(db, task_id, fence, {"rows": 100})
    out = anchor("tasks", "show", str(task_id), dsn=dsn).stdout
    assert 'result        {"rows": 100}' in out
    detail = json.loads(anchor("tasks", "show", str(task_id), "--json", dsn=dsn).stdout)
    assert (detail["result"], detail["progress"]) == ({"rows": 100}, {"done": 40, "total": 100})


def test_wait_prints_the_outcome_with_an_exit_code_per_ending(dsn: str, db: Conn, job: None) -> None:
    done = enqueue(db, "Job")  # each enqueued after the one before is claimed: a claim takes every due task
    succeed_with(db, done, claim_fence(db, done), {"rows": 3})
    failed = enqueue(db, "Job")
    fence = claim_fence(db, failed)
    db.execute("select anchor.fail_v2(%s, %s, %s, 'disk full', fatal => true)", (failed, fence, WORKER))
    cancelled = enqueue(db, "Job")
    db.execute("select anchor.cancel(%s)", (cancelled,))
    pending = enqueue(db, "Job")

    assert anchor("tasks", "wait", str(done), dsn=dsn).stdout == f'task {done}: succeeded\nresult: {{"rows": 3}}\n'
    outcome = json.loads(anchor("tasks", "wait", str(done), "--json", dsn=dsn).stdout)
    assert (outcome["task_id"], outcome["state"], outcome["result"]) == (done, "succeeded", {"rows": 3})
    assert anchor("tasks", "wait", str(failed), dsn=dsn, check=5).stdout == f"task {failed}: failed\nerror: disk full\n"
    assert anchor("tasks", "wait", str(cancelled), dsn=dsn, check=6).stdout == f"task {cancelled}: cancelled\n"
    timed_out = anchor("tasks", "wait", str(pending), "--timeout", "1s", dsn=dsn, check=7)
    assert timed_out.stderr == f"anchor tasks wait: task {pending} did not finish within 1s\n"
    assert anchor("tasks", "wait", "987654", dsn=dsn, check=4).stderr == "anchor tasks wait: no task 987654\n"


def test_wait_returns_when_the_task_finishes(dsn: str, db: Conn, job: None) -> None:
    task_id = enqueue(db, "Job")

    def finish() -> None:
        time.sleep(1.5)
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as worker:
            succeed_with(worker, task_id, claim_fence(worker, task_id), {"ok": True})

    thread = threading.Thread(target=finish)
    thread.start()
    result = anchor("tasks", "wait", str(task_id), "--timeout", "30s", "--json", dsn=dsn)
    thread.join()
    assert json.loads(result.stdout)["result"] == {"ok": True}


def test_the_dashboard_task_page_shows_progress_and_result(dsn: str, db: Conn, job: None) -> None:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from anchor_py.dashboard import create_app

    task_id = enqueue(db, "Job")
    fence = claim_fence(db, task_id)
    db.execute("select anchor.set_progress(%s, %s, %s, %s)", (task_id, fence, WORKER, Jsonb({"step": "loading"})))
    with TestClient(create_app(dsn)) as client:
        page = client.get(f"/tasks/{task_id}").text
        assert 'id="task-progress"' in page and "loading" in page and 'id="task-result"' not in page
        succeed_with(db, task_id, fence, {"rows": 12345})
        page = client.get(f"/tasks/{task_id}").text
        assert 'id="task-result"' in page and "12345" in page and "(last reported)" in page
