"""heartbeat_v2: tasks a worker no longer holds (a claim whose reply was lost) come back within
release_after instead of at deadline + grace; tasks it holds, and claims still in flight, are untouched."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest

from anchor_py.defaults import HEARTBEAT_TIMEOUT
from tests.sql.factories import WORKER, Conn, claim, db_now, definition, enqueue, events, fail, register, task


def heartbeat_v2(db: Conn, held: list[int], now: datetime) -> list[int]:
    row = db.execute(
        "select anchor.heartbeat_v2(%s, %s::bigint[], release_after => '30 seconds', p_now => %s) as ids",
        (WORKER, held, now),
    ).fetchone()
    assert row is not None
    return list(row["ids"])


def test_a_claimed_task_the_worker_never_received_is_handed_back(db: Conn) -> None:
    register(db, definition("Job", max_attempts=1))
    held_id, lost_id = enqueue(db, "Job"), enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    heartbeat_v2(db, [held_id], now + timedelta(seconds=10))
    assert task(db, lost_id)["state"] == "running"  # a reply may still be on its way
    heartbeat_v2(db, [held_id], now + timedelta(seconds=31))
    lost = task(db, lost_id)
    assert (lost["state"], lost["attempts"], lost["locked_by"]) == ("pending", 0, None)
    assert task(db, held_id)["state"] == "running"
    (event,) = events(db, lost_id)
    assert (event["kind"], event["details"]["reason"]) == ("handed_back", "not held by its worker")
    (row,) = claim(db, worker="worker-2", now=now + timedelta(seconds=31))
    assert (row["id"], row["attempt"]) == (lost_id, 1)  # the lost claim did not spend the only attempt


def test_a_hook_lease_the_worker_does_not_hold_is_released(db: Conn) -> None:
    register(db, definition("Job", on_failed=True))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    assert fail(db, task_id, 1, now=now) == "failing"
    heartbeat_v2(db, [], now + timedelta(minutes=1))
    released = task(db, task_id)
    assert (released["state"], released["locked_by"], released["hook_attempts"]) == ("failing", None, 0)


def test_an_unheld_task_with_a_cancel_request_ends_cancelled_and_held_cancels_are_reported(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=-1))
    held_id, lost_id = enqueue(db, "Job"), enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    db.execute("select anchor.cancel(%s), anchor.cancel(%s)", (held_id, lost_id))
    assert heartbeat_v2(db, [held_id], now + timedelta(minutes=1)) == [held_id]
    assert task(db, lost_id)["state"] == "cancelled"


def test_held_ids_are_required(db: Conn) -> None:
    with pytest.raises(psycopg.Error, match="heartbeat_v2: held_ids must be an array") as err:
        db.execute("select anchor.heartbeat_v2('w1', null)")
    assert err.value.sqlstate == "AT003"


def test_the_sql_defaults_are_the_shared_heartbeat_timeout(db: Conn) -> None:
    """Called without them, heartbeat_v2's release_after and rescue's heartbeat_timeout wait HEARTBEAT_TIMEOUT,
    the timeout the worker, the rescuer and the dashboard use."""
    timeout, second = HEARTBEAT_TIMEOUT, timedelta(seconds=1)
    register(db, definition("Job", retry_interval="1s", max_attempts=-1))
    lost_id, dead_id = enqueue(db, "Job"), enqueue(db, "Job")
    now = db_now(db)
    claim(db, max_tasks=1, now=now)
    claim(db, worker="dead-worker", max_tasks=1, now=now)

    def heartbeat_defaults(at: datetime) -> None:
        db.execute("select anchor.heartbeat_v2(%s, '{}', p_now => %s)", (WORKER, at))

    def rescue_defaults(at: datetime) -> list[int]:
        return [r["id"] for r in db.execute("select * from anchor.rescue(p_now => %s)", (at,)).fetchall()]

    heartbeat_defaults(now + timeout - second)
    assert task(db, lost_id)["state"] == "running"
    heartbeat_defaults(now + timeout + second)
    assert task(db, lost_id)["state"] == "pending"
    assert rescue_defaults(now + timeout - second) == []
    assert rescue_defaults(now + timeout + second) == [dead_id]
