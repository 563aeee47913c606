"""Results, progress and waiting in the SQL core: record_results, set_progress, task_outcome, wait_for_task and
the NOTIFY a waited task sends when it ends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from tests.sql.factories import WORKER, Conn, definition, enqueue, heartbeat, register, task

APP_LOGIN = "anchor_test_app"


@pytest.fixture
def app_dsn(db: Conn, dsn: str) -> str:
    """A DSN of a login holding only anchor_enqueuer (roles are cluster-wide: idempotent)."""
    db.execute("select anchor.ensure_roles()")
    db.execute(
        f"do $$ begin if not exists (select 1 from pg_roles where rolname = '{APP_LOGIN}') then "
        f"create role {APP_LOGIN} login; end if; end $$"
    )
    db.execute(f"grant anchor_enqueuer to {APP_LOGIN}")
    return make_conninfo(**{**conninfo_to_dict(dsn), "user": APP_LOGIN})


@pytest.fixture
def listener(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("listen anchor_outcome")
        yield conn


def claim_one(db: Conn, task_id: int) -> int:
    """Claims the task as WORKER; returns the claim's fence."""
    heartbeat(db)
    rows = db.execute("select id, fence from anchor.claim_v2(%s, 10) where kind = 'execute'", (WORKER,)).fetchall()
    fences = {row["id"]: row["fence"] for row in rows}
    return int(fences[task_id])


def record(db: Conn, task_id: int, fence: int, result: Any, worker: str = WORKER) -> str:
    row = db.execute(
        "select outcome from anchor.record_results(array[%s]::bigint[], array[%s]::bigint[], array[%s]::jsonb[], %s)",
        (task_id, fence, Jsonb(result), worker),
    ).fetchone()
    assert row is not None
    return str(row["outcome"])


def complete(db: Conn, task_id: int, fence: int) -> str:
    row = db.execute(
        "select outcome from anchor.complete_v2(array[%s]::bigint[], array[%s]::bigint[], %s)", (task_id, fence, WORKER)
    ).fetchone()
    assert row is not None
    return str(row["outcome"])


def notified_ids(conn: psycopg.Connection[Any]) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=0.5, stop_after=None)]


@pytest.fixture(autouse=True)
def job(db: Conn) -> None:
    register(db, definition("Job"))


def test_a_result_recorded_with_the_completion_is_the_outcome_the_enqueuer_reads(db: Conn, app_dsn: str) -> None:
    task_id = enqueue(db, "Job")
    fence = claim_one(db, task_id)
    with db.transaction():
        assert record(db, task_id, fence, {"rows": 3, "name": "ü"}) == "recorded"
        assert complete(db, task_id, fence) == "succeeded"
    with psycopg.connect(app_dsn, autocommit=True) as app:
        outcome = app.execute("select * from anchor.task_outcome(%s)", (task_id,)).fetchone()
        unknown = app.execute("select * from anchor.task_outcome(-1)").fetchall()
    assert outcome is not None and outcome[:3] == ("succeeded", {"rows": 3, "name": "ü"}, None) and outcome[3]
    assert unknown == []


def test_a_stale_fence_or_another_worker_stores_no_result(db: Conn) -> None:
    task_id = enqueue(db, "Job")
    fence = claim_one(db, task_id)
    assert record(db, task_id, fence + 1, {"x": 1}) == "stale"
    assert record(db, task_id, fence, {"x": 1}, worker="worker-2") == "stale"
    assert task(db, task_id)["result"] is None


def test_a_result_over_the_limit_is_refused_without_storing_it(db: Conn) -> None:
    db.execute("update anchor.settings set value = '100' where name = 'max_result_bytes'")
    task_id = enqueue(db, "Job")
    fence = claim_one(db, task_id)
    assert record(db, task_id, fence, {"text": "x" * 500}) == "too_large"
    assert task(db, task_id)["result"] is None


def test_progress_is_written_only_by_the_current_attempts_worker(db: Conn) -> None:
    task_id = enqueue(db, "Job")
    fence = claim_one(db, task_id)
    call = "select anchor.set_progress(%s, %s, %s, %s) as ok"
    assert db.execute(call, (task_id, fence, WORKER, Jsonb({"done": 1}))).fetchone() == {"ok": True}
    assert db.execute(call, (task_id, fence, "worker-2", Jsonb({"done": 9}))).fetchone() == {"ok": False}
    assert db.execute(call, (task_id, fence - 1, WORKER, Jsonb({"done": 9}))).fetchone() == {"ok": False}
    assert task(db, task_id)["progress"] == {"done": 1}
    complete(db, task_id, fence)
    assert db.execute(call, (task_id, fence, WORKER, Jsonb({"done": 2}))).fetchone() == {"ok": False}
    db.execute("update anchor.settings set value = '100' where name = 'max_result_bytes'")
    with pytest.raises(psycopg.Error, match=f"task {task_id}: progress of [0-9]+ bytes is over the limit"):
        db.execute(call, (task_id, fence, WORKER, Jsonb({"text": "x" * 500})))


def test_only_a_waited_task_notifies_and_only_when_it_ends(db: Conn, listener: psycopg.Connection[Any]) -> None:
    waited = enqueue(db, "Job")
    enqueue(db, "Job")  # nobody waits for this one: it completes without a notification
    assert db.execute("select * from anchor.wait_for_task(%s)", (waited,)).fetchall() == [
        {"state": "pending", "result": None, "error": None, "finished_at": None}
    ]
    heartbeat(db)
    for row in db.execute("select id, fence from anchor.claim_v2(%s, 10) where kind = 'execute'", (WORKER,)).fetchall():
        complete(db, row["id"], row["fence"])
    assert [task(db, task_id)["state"] for task_id in (waited, waited + 1)] == ["succeeded", "succeeded"]
    assert notified_ids(listener) == [str(waited)]


@pytest.mark.parametrize("ending", ["cancel", "fail"])
def test_a_waited_task_that_is_cancelled_or_fails_notifies(
    db: Conn, listener: psycopg.Connection[Any], ending: str
) -> None:
    task_id = enqueue(db, "Job")
    db.execute("select anchor.wait_for_task(%s)", (task_id,))
    if ending == "cancel":
        db.execute("select anchor.cancel(%s)", (task_id,))
    else:
        fence = claim_one(db, task_id)
        db.execute("select anchor.fail_v2(%s, %s, %s, 'boom', fatal => true)", (task_id, fence, WORKER))
    assert notified_ids(listener) == [str(task_id)]
    outcome = db.execute("select * from anchor.task_outcome(%s)", (task_id,)).fetchone()
    assert outcome is not None
    assert (outcome["state"], outcome["error"]) == (("cancelled", None) if ending == "cancel" else ("failed", "boom"))


def test_waiting_on_a_finished_task_returns_its_outcome_and_flags_nothing(db: Conn, app_dsn: str) -> None:
    task_id = enqueue(db, "Job")
    complete(db, task_id, claim_one(db, task_id))
    with psycopg.connect(app_dsn, autocommit=True) as app:
        rows = app.execute("select state from anchor.wait_for_task(%s)", (task_id,)).fetchall()
        many = app.execute("select id, state from anchor.task_outcomes(array[%s, -5])", (task_id,)).fetchall()
    assert rows == [("succeeded",)] and many == [(task_id, "succeeded")]
    assert task(db, task_id)["waited"] is False


def test_the_enqueuer_cannot_record_results_or_progress(db: Conn, app_dsn: str) -> None:
    task_id = enqueue(db, "Job")
    with psycopg.connect(app_dsn, autocommit=True) as app:
        for statement in (
            "select anchor.set_progress(%s, 1, 'w', '{}')",
            "select anchor.record_results(array[%s]::bigint[], '{1}', '{}', 'w')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement, (task_id,))
    assert json.dumps(task(db, task_id)["progress"]) == "null"


def test_flagging_a_claimable_task_wakes_the_workers_again(db: Conn, dsn: str) -> None:
    # a claim running while the flag holds the row lock skips the row (SKIP LOCKED): the workers must hear of it
    task_id = enqueue(db, "Job", queue="reports")
    with psycopg.connect(dsn, autocommit=True) as workers:
        workers.execute("listen anchor_tasks")
        db.execute("select anchor.wait_for_task(%s)", (task_id,))
        assert [n.payload for n in workers.notifies(timeout=0.5, stop_after=None)] == ["reports"]
        db.execute("select anchor.wait_for_task(%s)", (task_id,))  # already flagged: no second wake-up
        assert [n.payload for n in workers.notifies(timeout=0.5, stop_after=None)] == []
