"""The roles mean what they say: a login holding anchor_worker runs tasks, but cannot purge history, lock
registration out, or take or release the tasks of other workers with hostile arguments or a moved clock.
Admins (and the schema owner) keep the full range, p_now included."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.sql.factories import WORKER, Conn, claim, complete, db_now, definition, enqueue, heartbeat, register, task
from tests.sql.hostile import as_role, one, sqlstate_of

VICTIM = "victim"


@pytest.fixture
def worker(db: Conn, dsn: str) -> Iterator[Conn]:
    db.execute("select anchor.ensure_roles()")
    register(db, definition("Job", max_attempts=3), definition("Other"))
    with as_role(dsn, "anchor_worker") as conn:
        yield conn


def victim_task(db: Conn) -> int:
    """A task the victim worker claimed a minute ago and still runs (it heartbeated just now)."""
    a_minute_ago = db_now(db) - timedelta(minutes=1)
    task_id = enqueue(db, "Job", p_now=a_minute_ago)
    assert [r["id"] for r in claim(db, VICTIM, now=a_minute_ago)] == [task_id]
    heartbeat(db, VICTIM)
    return task_id


def test_a_worker_prunes_only_past_the_minimum_retention(db: Conn, worker: Conn) -> None:
    task_id = enqueue(db, "Job")
    (row,) = claim(db)
    complete(db, task_id, row["attempt"])
    assert one(worker, "select anchor.prune(succeeded_after => '0', failed_after => '0')") == 0
    assert one(worker, "select anchor.prune(p_now => now() + interval '10 years')") == 0
    assert task(db, task_id)["state"] == "succeeded"
    # the owner (an operator) may purge everything
    assert one(db, "select anchor.prune(succeeded_after => '0', failed_after => '0')") == 1


def test_a_worker_cannot_lock_registration_out_with_an_absurd_version(db: Conn, worker: Conn) -> None:
    state, message = sqlstate_of(lambda: one(worker, "select anchor.register_tasks('[]', 9223372036854775807)"))
    assert state == "AT003" and "9223372036854775807" in message, message
    assert one(db, "select count(*) from anchor.task_definitions where active") == 2
    assert one(worker, "select anchor.register_tasks(%s::jsonb, 2)", ('[{"name": "Job"}]',)) == "applied"


@pytest.mark.parametrize("args", [
    "heartbeat_timeout => '0'",
    "heartbeat_timeout => '-1 hour'",
    "deadline_grace => '-10 hours'",
    "p_now => now() + interval '1 day'",
])
def test_a_worker_cannot_rescue_a_live_workers_task(db: Conn, worker: Conn, args: str) -> None:
    task_id = victim_task(db)
    assert worker.execute(f"select * from anchor.rescue({args})").fetchall() == []
    assert task(db, task_id)["state"] == "running"


@pytest.mark.parametrize(
    "args", ["release_after => '-1 hour'", "release_after => '0'", "p_now => now() + interval '1 day'"]
)
def test_a_worker_cannot_release_another_workers_fresh_claims(db: Conn, worker: Conn, args: str) -> None:
    task_id = enqueue(db, "Job")
    claim(db, VICTIM)
    worker.execute(f"select anchor.heartbeat_v2('{VICTIM}', '{{}}', {args})")
    assert task(db, task_id)["state"] == "running"


def test_a_worker_cannot_move_another_workers_heartbeat_back(db: Conn, worker: Conn) -> None:
    task_id = victim_task(db)
    held = f"array[{task_id}]::bigint[]"
    worker.execute(f"select anchor.heartbeat_v2('{VICTIM}', {held}, p_now => now() - interval '1 hour')")
    assert one(db, "select anchor.worker_alive(%s, '30 seconds', now())", (VICTIM,)) is True
    assert db.execute("select * from anchor.rescue()").fetchall() == []
    assert task(db, task_id)["state"] == "running"


def test_a_worker_cannot_deregister_a_worker_that_still_runs_tasks(db: Conn, worker: Conn) -> None:
    task_id = victim_task(db)
    worker.execute(f"select anchor.deregister_worker('{VICTIM}')")
    assert one(db, "select anchor.worker_alive(%s, '30 seconds', now())", (VICTIM,)) is True
    assert db.execute("select * from anchor.rescue()").fetchall() == []
    assert task(db, task_id)["state"] == "running"


def test_a_stopping_worker_that_handed_its_tasks_back_deregisters(db: Conn, worker: Conn) -> None:
    task_id = enqueue(db, "Job")
    worker.execute(f"select anchor.heartbeat_v2('{WORKER}', '{{}}')")
    (row,) = worker.execute(f"select * from anchor.claim('{WORKER}', 10) where kind = 'execute'").fetchall()
    worker.execute(f"select * from anchor.hand_back(array[{task_id}]::bigint[], array[{row['attempt']}], '{WORKER}')")
    worker.execute(f"select anchor.deregister_worker('{WORKER}')")
    assert one(db, "select count(*) from anchor.workers where worker_id = %s", (WORKER,)) == 0
    assert task(db, task_id)["state"] == "pending"


def test_the_v2_twins_are_granted_like_their_v1_functions(db: Conn, worker: Conn) -> None:
    rows = db.execute(
        """
        select p.proname, has_function_privilege('anchor_worker', p.oid, 'execute') as worker,
            has_function_privilege('anchor_enqueuer', p.oid, 'execute') as enqueuer, p.prosecdef
        from pg_proc p where p.pronamespace = 'anchor'::regnamespace and p.proname like '%\\_v2'
        """
    ).fetchall()
    assert {r["proname"] for r in rows} >= {"claim_v2", "complete_v2", "fail_v2", "hand_back_v2", "heartbeat_v2"}
    assert all(r["worker"] and not r["enqueuer"] and r["prosecdef"] for r in rows), rows


def start_tick(db: Conn) -> Any:
    """A cron schedule (every second) whose next fire time is a day ahead; returns that time."""
    register(db, definition("Job", max_attempts=3), definition("Tick", cron={"expression": "* * * * * *"}), version=2)
    tomorrow = db_now(db) + timedelta(days=1)
    db.execute("select * from anchor.cron_fire('Tick', null, '{}', '[]', %s)", (tomorrow,)).fetchall()
    return tomorrow


def test_a_worker_cannot_fire_a_schedule_early_by_moving_the_clock(db: Conn, worker: Conn) -> None:
    tomorrow = start_tick(db)
    assert worker.execute("select * from anchor.cron_take_due(p_now => %s)", (tomorrow,)).fetchall() == []
    state, message = sqlstate_of(lambda: worker.execute(
        "select * from anchor.cron_fire('Tick', %s, array[%s]::timestamptz[], '[{}]', %s, p_now => %s)",
        (tomorrow, tomorrow, tomorrow + timedelta(seconds=1), tomorrow),
    ).fetchall())
    assert state == "AT003" and "in the future" in message, message
    assert one(db, "select count(*) from anchor.tasks where name = 'Tick'") == 0


def test_a_schedule_cannot_be_pushed_past_what_a_worker_can_decode(db: Conn, worker: Conn) -> None:
    tomorrow = start_tick(db)
    state, message = sqlstate_of(lambda: worker.execute(
        "select * from anchor.cron_fire('Tick', %s, '{}', '[]', 'infinity')", (tomorrow,)
    ).fetchall())
    assert state == "AT003" and "next_fire_at" in message, message
    worker.execute("select anchor.cron_fail('Tick', 'broken', p_now => 'infinity')")
    paused_at = one(db, "select paused_at from anchor.cron_schedules where name = 'Tick'")
    assert abs(paused_at - db_now(db)) < timedelta(minutes=1)
