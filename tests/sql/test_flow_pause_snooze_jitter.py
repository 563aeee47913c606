"""Paused queues start nothing while their hooks still run and resume at once; a snoozed task goes back to
pending with its attempt given back and a 'snoozed' event; jittered retries fall within their bounds."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from tests.sql.factories import (
    Conn,
    claim_v2,
    complete_v2,
    db_now,
    definition,
    enqueue,
    events,
    register_v2,
    task,
)


def executed(rows: list[dict[str, object]]) -> list[object]:
    return [r["id"] for r in rows if r["kind"] == "execute"]


def test_a_paused_queue_starts_nothing_runs_its_hooks_and_resumes_at_once(db: Conn, dsn: str) -> None:
    register_v2(db, [definition("Mail", queue="emails", on_failed=True), definition("Other")], [])
    first = enqueue(db, "Mail")
    (running,) = [r for r in claim_v2(db, max_tasks=1, queues=["emails"]) if r["kind"] == "execute"]
    mails = [enqueue(db, "Mail", {"n": n}) for n in range(3)]
    other = enqueue(db, "Other")
    assert db.execute("select anchor.pause_queue('emails') as o").fetchone() == {"o": "paused"}
    assert db.execute("select anchor.pause_queue('emails') as o").fetchone() == {"o": "unchanged"}
    # nothing of the paused queue starts, other queues go on
    assert executed(claim_v2(db, max_tasks=10)) == [other]
    # the running task finishes; it fails finally, and its hook still runs in the paused queue
    assert db.execute(
        "select anchor.fail_v2(%s, %s, 'worker-1', 'boom', fatal => true) as o", (first, running["fence"])
    ).fetchone() == {"o": "failing"}
    db.execute("select anchor.deregister_worker('worker-1')")  # its worker stops and lets the hook's lease go
    rows = claim_v2(db, max_tasks=10)
    assert [(r["kind"], r["id"]) for r in rows if r["kind"] != "wake"] == [("hook", first)]
    assert {task(db, m)["state"] for m in mails} == {"pending"}
    (row,) = db.execute("select name, paused, pending from anchor.queues() where name = 'emails'").fetchall()
    assert row == {"name": "emails", "paused": True, "pending": 3}

    listener = psycopg.connect(dsn, autocommit=True)
    try:
        listener.execute("listen anchor_tasks")
        assert db.execute("select anchor.resume_queue('emails') as o").fetchone() == {"o": "resumed"}
        assert [n.payload for n in listener.notifies(timeout=1, stop_after=1)] == ["emails"]
    finally:
        listener.close()
    assert sorted(executed(claim_v2(db, max_tasks=10))) == mails
    assert db.execute("select anchor.resume_queue('emails') as o").fetchone() == {"o": "unchanged"}


def test_a_queue_paused_before_it_is_known_holds_its_first_tasks(db: Conn) -> None:
    db.execute("select anchor.pause_queue('later')")
    register_v2(db, [definition("Job", queue="later")], [])
    enqueue(db, "Job")
    assert executed(claim_v2(db, max_tasks=10)) == []
    rows = db.execute(
        "select name, paused, concurrency, pending, held, running, failing from anchor.queues()"
    ).fetchall()
    assert rows == [
        {"name": "later", "paused": True, "concurrency": None, "pending": 1, "held": 0, "running": 0, "failing": 0}
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("select anchor.pause_queue('')", "pause_queue: queue must be a non-empty name, got ''"),
        ("select anchor.pause_queue(null)", "pause_queue: queue must be a non-empty name, got NULL"),
        (
            "select anchor.resume_queue(repeat('q', 300))",
            "resume_queue: queue 'qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq'... of 300 bytes",
        ),
        (
            "select anchor.snooze(1, 1, 'w', '0 seconds')",
            "snooze: task 1: delay must be above zero and at most 100000 hours, got 00:00:00",
        ),
        (
            "select anchor.snooze(7, 1, 'w', '-5 seconds')",
            "snooze: task 7: delay must be above zero and at most 100000 hours, got -00:00:05",
        ),
        (
            "select anchor.snooze(7, 1, 'w', '100001 hours')",
            "snooze: task 7: delay must be above zero and at most 100000 hours, got 100001:00:00",
        ),
        (
            "select anchor.snooze(7, 1, 'w', null)",
            "snooze: task 7: delay must be above zero and at most 100000 hours, got null",
        ),
    ],
)
def test_bad_arguments_are_refused(db: Conn, call: str, message: str) -> None:
    with pytest.raises(psycopg.Error) as caught:
        db.execute(call)
    assert caught.value.sqlstate == "AT003"
    assert str(caught.value.diag.message_primary).startswith(message)


def test_snooze_gives_the_attempt_back_and_records_the_delay(db: Conn) -> None:
    register_v2(db, [definition("Poll", max_attempts=1)], [])
    task_id = enqueue(db, "Poll")
    now = db_now(db)
    for _ in range(3):
        (row,) = [r for r in claim_v2(db, "w", 1, now) if r["kind"] == "execute"]
        assert row["attempt"] == 1  # max_attempts 1, yet each wake-up is the first attempt again
        assert db.execute(
            "select anchor.snooze(%s, %s, 'w', '30 seconds', %s) as o", (task_id, row["fence"], now)
        ).fetchone() == {"o": "snoozed"}
        # a second report with the same fence is stale
        assert db.execute(
            "select anchor.snooze(%s, %s, 'w', '30 seconds', %s) as o", (task_id, row["fence"], now)
        ).fetchone() == {"o": "stale"}
        after = task(db, task_id)
        assert (after["state"], after["attempts"], after["run_at"], after["locked_by"]) == (
            "pending",
            0,
            now + timedelta(seconds=30),
            None,
        )
        assert executed(claim_v2(db, "w", 1, now + timedelta(seconds=29))) == []
        now += timedelta(seconds=30)
    snoozes = [e for e in events(db, task_id) if e["kind"] == "snoozed"]
    assert len(snoozes) == 3
    assert snoozes[0]["attempt"] == 1 and snoozes[0]["worker_id"] == "w"
    assert snoozes[0]["details"]["delay"] == "00:00:30" and snoozes[0]["details"]["delay_seconds"] == 30
    (row,) = [r for r in claim_v2(db, "w", 1, now) if r["kind"] == "execute"]
    assert complete_v2(db, [row], "w") == ["succeeded"]
    # another worker's, or a finished task's, snooze is stale
    assert db.execute("select anchor.snooze(%s, %s, 'w', '1 second') as o", (task_id, row["fence"])).fetchone() == {
        "o": "stale"
    }


def test_snoozing_a_task_whose_cancel_was_requested_cancels_it(db: Conn) -> None:
    register_v2(db, [definition("Poll")], [])
    task_id = enqueue(db, "Poll")
    (row,) = [r for r in claim_v2(db, "w", 1) if r["kind"] == "execute"]
    db.execute("select anchor.cancel(%s)", (task_id,))
    assert db.execute("select anchor.snooze(%s, %s, 'w', '1 minute') as o", (task_id, row["fence"])).fetchone() == {
        "o": "cancelled"
    }
    assert task(db, task_id)["state"] == "cancelled"


def fail_all(db: Conn, name: str, count: int) -> list[timedelta]:
    """Enqueues, claims and fails `count` tasks at one instant; the waits their retries got."""
    for n in range(count):
        enqueue(db, name, {"n": n})
    now = db_now(db)
    rows = [r for r in claim_v2(db, "w", count, now) if r["kind"] == "execute"]
    assert len(rows) == count
    for row in rows:
        db.execute("select anchor.fail_v2(%s, %s, 'w', 'boom', p_now => %s)", (row["id"], row["fence"], now))
    return [task(db, r["id"])["run_at"] - now for r in rows]


def test_jittered_retries_fall_within_their_bounds(db: Conn) -> None:
    register_v2(
        db,
        [
            definition("Jit", retry_interval="100s", max_attempts=5, retry_jitter=0.2),
            definition("Exact", retry_interval="100s", max_attempts=5),
        ],
        [],
    )
    waits = fail_all(db, "Jit", 200)
    assert all(timedelta(seconds=80) <= w <= timedelta(seconds=120) for w in waits), (min(waits), max(waits))
    # spread across the range, not bunched
    assert min(waits) < timedelta(seconds=90) and max(waits) > timedelta(seconds=110)
    assert fail_all(db, "Exact", 20) == [timedelta(seconds=100)] * 20


def test_a_rescued_tasks_retry_is_jittered_too(db: Conn) -> None:
    register_v2(db, [definition("Jit", retry_interval="100s", max_attempts=-1, retry_jitter=0.5)], [])
    for n in range(50):
        enqueue(db, "Jit", {"n": n})
    now = db_now(db)
    claim_v2(db, "dead", 50, now)
    rescued = db.execute("select * from anchor.rescue(heartbeat_timeout => '1 second', p_now => %s)", (now,)).fetchall()
    assert len(rescued) == 50
    waits = [r["run_at"] - now for r in db.execute("select run_at from anchor.tasks").fetchall()]
    assert all(timedelta(seconds=50) <= w <= timedelta(seconds=150) for w in waits)
    assert len(set(waits)) > 40
