"""Crash recovery: tasks of workers that stopped heartbeating, or past their deadline, come back; a
server restart does not make live workers look dead; max_rescues ends a task that keeps killing workers."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import psycopg

from tests.sql.factories import (
    WORKER,
    Conn,
    claim,
    db_now,
    definition,
    enqueue,
    events,
    fail,
    heartbeat,
    register,
    task,
)


def rescue(db: Conn, now: object, **kw: object) -> list[tuple[int, str]]:
    args = "".join(f", {key} => %({key})s" for key in kw)
    rows = db.execute(
        "select * from anchor.rescue(heartbeat_timeout => '30 seconds', deadline_grace => '10 seconds',"
        f" p_now => %(now)s{args})",
        {"now": now, **kw},
    ).fetchall()
    return [(r["id"], r["outcome"]) for r in rows]


def test_a_dead_workers_task_returns_to_pending_after_its_retry_interval(db: Conn) -> None:
    register(db, definition("Job", retry_interval="5s", max_attempts=-1))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    assert rescue(db, now + timedelta(seconds=29)) == []  # heartbeat still fresh
    assert rescue(db, now + timedelta(seconds=31)) == [(task_id, "pending")]
    back = task(db, task_id)
    assert (back["state"], back["rescues"], back["locked_by"]) == ("pending", 1, None)
    assert back["run_at"] == now + timedelta(seconds=36)
    (event,) = events(db, task_id)
    assert (event["kind"], event["message"], event["worker_id"]) == ("rescued", "worker stopped heartbeating", WORKER)


def test_a_live_worker_keeps_its_task_until_the_deadline_plus_grace(db: Conn) -> None:
    register(db, definition("Job", timeout="60s", retry_interval="1s", max_attempts=-1))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    heartbeat(db, WORKER, now + timedelta(seconds=65))
    assert rescue(db, now + timedelta(seconds=69)) == []
    assert rescue(db, now + timedelta(seconds=71)) == [(task_id, "pending")]
    assert events(db, task_id)[0]["message"] == "deadline passed"
    # the hung worker reports late: fencing ignores it
    assert fail(db, task_id, 1) == "stale"


def test_rescue_ends_the_task_when_attempts_are_used_up_and_runs_the_hook(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=1, on_failed=True))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    assert rescue(db, now + timedelta(minutes=5)) == [(task_id, "failing")]
    (row,) = claim(db, worker="worker-2", now=now + timedelta(minutes=5))
    assert (row["kind"], row["id"], row["hook_attempt"]) == ("hook", task_id, 1)


def test_a_task_that_kills_its_worker_max_rescues_times_is_failed(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=-1))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    outcomes = []
    for round_number in range(3):
        claim(db, worker=f"w{round_number}", now=now)
        now += timedelta(minutes=1)
        outcomes += [o for _, o in rescue(db, now, max_rescues=3)]
        now += timedelta(seconds=1)
    assert outcomes == ["pending", "pending", "failed"]
    assert task(db, task_id)["rescues"] == 3


def test_no_false_rescue_right_after_a_server_restart(db: Conn) -> None:
    """Heartbeats count from the server's start at the latest: a worker whose last heartbeat predates a
    restart is given a full timeout to reconnect."""
    register(db, definition("Job", retry_interval="1s", max_attempts=-1))
    task_id = enqueue(db, "Job")
    claim(db)
    started = db.execute("select pg_postmaster_start_time() as t").fetchone()["t"]  # type: ignore[index]
    db.execute("update anchor.workers set last_heartbeat = %s", (started - timedelta(hours=1),))
    assert rescue(db, started + timedelta(seconds=20)) == []
    assert rescue(db, started + timedelta(seconds=31)) == [(task_id, "pending")]


def test_a_dead_workers_hook_lease_is_released_for_any_worker(db: Conn) -> None:
    register(db, definition("Job", on_failed=True))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    assert fail(db, task_id, 1, now=now) == "failing"
    assert rescue(db, now + timedelta(minutes=5)) == [(task_id, "failing")]
    (row,) = claim(db, worker="worker-2", now=now + timedelta(minutes=5))
    assert (row["kind"], row["hook_attempt"]) == ("hook", 2)


def test_a_hook_lease_with_no_attempts_left_ends_hook_failed(db: Conn) -> None:
    register(db, definition("Job", on_failed=True))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    fail(db, task_id, 1, now=now)
    assert rescue(db, now + timedelta(minutes=5), max_hook_attempts=1) == [(task_id, "hook_failed")]


def test_only_one_rescuer_works_at_a_time(db: Conn) -> None:
    import psycopg

    register(db, definition("Job", retry_interval="1s", max_attempts=-1))
    enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    with psycopg.connect(db.info.dsn) as other:
        other.execute("select pg_advisory_xact_lock(hashtext('anchor.rescue'))")
        assert rescue(db, now + timedelta(minutes=5)) == []  # someone else holds the rescue lock
    assert len(rescue(db, now + timedelta(minutes=5))) == 1


def test_deregister_releases_hook_leases_and_removes_the_worker(db: Conn) -> None:
    register(db, definition("Job", on_failed=True))
    task_id = enqueue(db, "Job")
    claim(db)
    fail(db, task_id, 1)
    db.execute("select anchor.deregister_worker(%s)", (WORKER,))
    released = task(db, task_id)
    assert (released["state"], released["locked_by"], released["hook_attempts"]) == ("failing", None, 0)
    assert db.execute("select count(*) as n from anchor.workers").fetchone() == {"n": 0}
    (row,) = claim(db, worker="worker-2")
    assert (row["kind"], row["hook_attempt"]) == ("hook", 1)


def test_rescued_tasks_run_one_per_worker_so_bystanders_of_a_crash_are_not_failed(db: Conn) -> None:
    """Three tasks die with their worker; afterwards each worker holds at most one rescued task, so only
    the task that really crashes keeps being rescued until max_rescues fails it."""
    register(db, definition("Job", retry_interval="1s", max_attempts=-1))
    culprit, *bystanders = [enqueue(db, "Job", {"n": i}) for i in range(3)]
    fresh = enqueue(db, "Job", {"n": 9}, delay=timedelta(seconds=30))
    now = db_now(db)
    assert len(claim(db, worker="w0", now=now)) == 3
    now += timedelta(minutes=1)
    assert sorted(rescue(db, now)) == sorted((i, "pending") for i in [culprit, *bystanders])

    now += timedelta(seconds=2)
    first = claim(db, worker="w1", now=now)
    assert sorted(r["id"] for r in first) == [culprit, fresh]  # one rescued task, then fresh work
    assert claim(db, worker="w1", now=now) == []  # w1 holds a rescued task: no second one
    second = claim(db, worker="w2", now=now)
    assert [r["id"] for r in second] == [bystanders[0]]
    # the culprit crashes w1 again, alone among rescued tasks: only it (and w1's fresh task) is rescued
    now += timedelta(minutes=1)
    heartbeat(db, "w2", now)
    assert sorted(rescue(db, now)) == sorted([(culprit, "pending"), (fresh, "pending")])
    assert task(db, culprit)["rescues"] == 2
    assert task(db, bystanders[0])["rescues"] == 1


def test_two_claims_of_one_worker_at_once_still_start_one_rescued_task(dsn: str, db: Conn) -> None:
    """A worker with a backlog sends its next claim while the previous one is still in the database. The
    second claim waits for the first one's decision on the worker's rescued slot, then sees its rescued task:
    the worker still holds one."""
    register(db, definition("Job", retry_interval="1s", max_attempts=-1))
    ids = sorted(enqueue(db, "Job", {"n": i}) for i in range(2))
    now = db_now(db)
    assert len(claim(db, worker="w0", now=now)) == 2
    now += timedelta(minutes=1)
    assert sorted(rescue(db, now)) == [(ids[0], "pending"), (ids[1], "pending")]
    now += timedelta(seconds=2)
    heartbeat(db, "w1", now)
    claim_sql = "select id from anchor.claim_v2('w1', 10, p_now => %s) where kind = 'execute'"
    second: dict[str, Any] = {}

    def second_claim() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            second["ids"] = [row[0] for row in conn.execute(claim_sql, (now,)).fetchall()]

    with psycopg.connect(dsn) as first:  # its transaction stays open: the first claim has not committed
        assert [row[0] for row in first.execute(claim_sql, (now,)).fetchall()] == [ids[0]]
        thread = threading.Thread(target=second_claim)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive(), "the second claim did not wait for the first one's rescued slot"
        first.commit()
    thread.join(10)
    assert second["ids"] == []
    assert task(db, ids[1])["state"] == "pending"
