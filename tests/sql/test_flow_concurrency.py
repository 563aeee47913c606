"""Concurrency limits hold inside the claim, under races between any number of claimers: never more tasks
`running` than a limit (checked at every step and from the recorded start and end times), keyed groups run
in parallel with each other, one key's backlog never delays another key, and every way a task stops running
frees its slot and wakes the claimers."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.sql.factories import (
    Conn,
    claim_v2,
    complete_v2,
    db_now,
    definition,
    enqueue,
    keyed_definition,
    register_v2,
    running_count,
    task,
)


def max_overlap(intervals: list[tuple[Any, Any]]) -> int:
    """The most intervals [start, end) open at one instant."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    depth = best = 0
    for _, step in points:
        depth += step
        best = max(best, depth)
    return best


def executions(db: Conn, name: str) -> list[dict[str, Any]]:
    """Each finished task's start (the claim's lock time) and end, with its group."""
    return db.execute(
        "select id, flow_key, locked_at as started, finished_at as ended from anchor.tasks"
        " where name = %s and state = 'succeeded' order by locked_at",
        (name,),
    ).fetchall()


def race(dsn: str, claimers: int, max_tasks: int, check: Any) -> list[BaseException]:
    """`claimers` threads, each on its own connection, claim, check, hold the tasks a moment and complete,
    until nothing is pending or running. Returns the errors the threads raised."""
    errors: list[BaseException] = []

    def run(worker: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
                while True:
                    rows = [r for r in claim_v2(conn, worker, max_tasks) if r["kind"] == "execute"]
                    check(conn)
                    if rows:
                        time.sleep(random.uniform(0, 0.01))
                        assert complete_v2(conn, rows, worker) == ["succeeded"] * len(rows)
                        continue
                    left = conn.execute(
                        "select count(*) as n from anchor.tasks where state in ('pending', 'running')"
                    ).fetchone()
                    if left is None or left["n"] == 0:
                        return
                    time.sleep(0.002)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(f"w{i}",)) for i in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


def test_a_global_limit_of_3_holds_against_8_concurrent_claimers(db: Conn, dsn: str) -> None:
    register_v2(db, [definition("Api", concurrency={"limit": 3})], [])
    for n in range(80):
        enqueue(db, "Api", {"n": n})
    seen: list[int] = []

    def check(conn: Conn) -> None:
        seen.append(running_count(conn, name="Api"))
        assert seen[-1] <= 3, f"{seen[-1]} running"

    assert race(dsn, claimers=8, max_tasks=2, check=check) == []
    done = executions(db, "Api")
    assert len(done) == 80
    assert max(seen) <= 3
    # from the rows: never more than 3 executions open at one instant, and the limit was reached
    assert max_overlap([(r["started"], r["ended"]) for r in done]) == 3


def test_per_key_limit_1_runs_each_key_alone_and_keys_in_parallel(db: Conn, dsn: str) -> None:
    register_v2(db, [keyed_definition("Sync", concurrency={"limit": 1, "key": "account"})], [])
    for n in range(12):
        for account in ("a", "b", "c", "d"):
            enqueue(db, "Sync", {"account": account, "n": n})

    def check(conn: Conn) -> None:
        per_key = conn.execute(
            "select flow_key, count(*) as n from anchor.tasks where state = 'running' group by flow_key"
        ).fetchall()
        assert all(r["n"] <= 1 for r in per_key), per_key

    assert race(dsn, claimers=6, max_tasks=3, check=check) == []
    done = executions(db, "Sync")
    assert len(done) == 48
    for account in ('"a"', '"b"', '"c"', '"d"'):
        assert max_overlap([(r["started"], r["ended"]) for r in done if r["flow_key"] == account]) == 1
    assert max_overlap([(r["started"], r["ended"]) for r in done]) >= 2  # different keys did run at once


def test_a_queue_limit_counts_every_name_of_the_queue(db: Conn, dsn: str) -> None:
    register_v2(
        db,
        [definition("A", queue="q"), definition("B", queue="q", concurrency={"limit": 5})],
        [{"name": "q", "concurrency": 2}],
    )
    for n in range(20):
        enqueue(db, "A", {"n": n})
        enqueue(db, "B", {"n": n})

    def check(conn: Conn) -> None:
        assert running_count(conn, queue="q") <= 2

    assert race(dsn, claimers=5, max_tasks=2, check=check) == []
    done = executions(db, "A") + executions(db, "B")
    assert len(done) == 40
    assert max_overlap([(r["started"], r["ended"]) for r in done]) == 2


def drain_order(db: Conn, max_tasks: int) -> list[str]:
    """One claimer drains the name, completing each batch before the next claim; the groups in start order."""
    order: list[str] = []
    while rows := [r for r in claim_v2(db, max_tasks=max_tasks) if r["kind"] == "execute"]:
        order += [task(db, r["id"])["flow_key"] for r in rows]
        complete_v2(db, rows)
    return order


def test_a_keys_backlog_does_not_delay_another_key_limit_1(db: Conn) -> None:
    """1,000 due tasks of key A, then 10 of key B: B's ten all start before A has started 11."""
    register_v2(db, [keyed_definition("Sync", concurrency={"limit": 1, "key": "account"})], [])
    db.execute(
        "select anchor.enqueue_many('Sync', (select jsonb_agg(jsonb_build_object('account', 'A', 'n', g))"
        " from generate_series(1, 1000) as g))"
    )
    for n in range(10):
        enqueue(db, "Sync", {"account": "B", "n": n})
    order = drain_order(db, max_tasks=10)
    assert len(order) == 1010
    last_b = max(i for i, key in enumerate(order) if key == '"B"')
    assert order[: last_b + 1].count('"A"') <= 11, order[: last_b + 1]


def test_a_keys_backlog_does_not_delay_another_key_under_a_queue_limit(db: Conn) -> None:
    """Keys limited to 100 each, the queue to 2: the groups share the queue's slots round robin, so B's ten
    start while A starts at most 12."""
    register_v2(
        db,
        [keyed_definition("Sync", queue="q", concurrency={"limit": 100, "key": "account"})],
        [{"name": "q", "concurrency": 2}],
    )
    db.execute(
        "select anchor.enqueue_many('Sync', (select jsonb_agg(jsonb_build_object('account', 'A', 'n', g))"
        " from generate_series(1, 1000) as g), queue => 'q')"
    )
    for n in range(10):
        enqueue(db, "Sync", {"account": "B", "n": n}, queue="q")
    order = drain_order(db, max_tasks=10)
    assert len(order) == 1010
    last_b = max(i for i, key in enumerate(order) if key == '"B"')
    assert order[: last_b + 1].count('"A"') <= 12, order[: last_b + 1]


def listen(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("listen anchor_tasks")
    return conn


def notified_queues(conn: psycopg.Connection[Any]) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=0.5, stop_after=10)]


def test_every_way_out_of_running_frees_the_slot_and_wakes_the_queue(db: Conn, dsn: str) -> None:
    register_v2(
        db,
        [definition("One", queue="q", concurrency={"limit": 1}, retry_interval="1s", max_attempts=-1, on_failed=True)],
        [],
    )
    for n in range(8):
        enqueue(db, "One", {"n": n})
    now = db_now(db)
    db.execute("select anchor.heartbeat_v2('w', '{}', p_now => %s)", (now,))
    listener = listen(dsn)
    try:
        hand_back = "select anchor.hand_back_v2(array[%(id)s]::bigint[], array[%(fence)s]::bigint[], 'w', %(now)s)"
        ways = {
            "complete": "select anchor.complete_v2(array[%(id)s]::bigint[], array[%(fence)s]::bigint[], 'w')",
            "fail": "select anchor.fail_v2(%(id)s, %(fence)s, 'w', 'boom', p_now => %(now)s)",
            "fail_fatal": "select anchor.fail_v2(%(id)s, %(fence)s, 'w', 'boom', fatal => true, p_now => %(now)s)",
            "hand_back": hand_back,
            "snooze": "select anchor.snooze(%(id)s, %(fence)s, 'w', '1 hour', %(now)s)",
            "cancel": "select anchor.cancel(%(id)s); " + hand_back,
            "rescue": "select anchor.rescue(heartbeat_timeout => '1 second', p_now => %(now)s + interval '1 hour')",
        }
        for way, statement in ways.items():
            (row,) = [r for r in claim_v2(db, "w", 5, now) if r["kind"] == "execute"]
            assert [r for r in claim_v2(db, "w", 5, now) if r["kind"] == "execute"] == []  # the slot is taken
            notified_queues(listener)
            for part in statement.split("; "):
                db.execute(part, {"id": row["id"], "fence": row["fence"], "now": now})
            assert task(db, row["id"])["state"] != "running", way
            assert "q" in notified_queues(listener), way
            if way == "rescue":
                now += timedelta(hours=2)
                db.execute("select anchor.heartbeat_v2('w', '{}', p_now => %s)", (now,))
    finally:
        listener.close()


def test_a_running_hook_does_not_hold_the_slot(db: Conn) -> None:
    register_v2(db, [definition("One", concurrency={"limit": 1}, on_failed=True)], [])
    first, second = enqueue(db, "One"), enqueue(db, "One")
    (row,) = [r for r in claim_v2(db, max_tasks=5) if r["kind"] == "execute"]
    assert row["id"] == first
    assert db.execute(
        "select anchor.fail_v2(%s, %s, 'worker-1', 'boom', fatal => true) as o", (first, row["fence"])
    ).fetchone() == {"o": "failing"}
    # the failing task's hook is leased to the worker, yet the next task starts
    assert [r["id"] for r in claim_v2(db, max_tasks=5) if r["kind"] == "execute"] == [second]


def test_tasks_without_limits_are_not_touched(db: Conn) -> None:
    register_v2(db, [definition("Free"), definition("Api", concurrency={"limit": 1})], [])
    free = [enqueue(db, "Free", {"n": n}) for n in range(5)]
    api = [enqueue(db, "Api", {"n": n}) for n in range(5)]
    assert {(task(db, i)["flow_key"], task(db, i)["waiting_for"]) for i in free} == {(None, None)}
    assert {(task(db, i)["flow_key"], task(db, i)["waiting_for"]) for i in api} == {("", "limit")}
    started = sorted(r["id"] for r in claim_v2(db, max_tasks=20) if r["kind"] == "execute")
    assert started == sorted(free + api[:1])


def test_names_of_a_limited_queue_share_it_round_robin(db: Conn) -> None:
    """A queue limited to 1: 100 tasks of A, then 3 of B; B's three start before A's fifth."""
    register_v2(db, [definition("A", queue="q"), definition("B", queue="q")], [{"name": "q", "concurrency": 1}])
    for n in range(100):
        enqueue(db, "A", {"n": n})
    for n in range(3):
        enqueue(db, "B", {"n": n})
    names: list[str] = []
    while rows := [r for r in claim_v2(db, max_tasks=10) if r["kind"] == "execute"]:
        assert len(rows) == 1
        names.append(rows[0]["name"])
        complete_v2(db, rows)
    assert len(names) == 103
    assert names[: names.index("B", names.index("B", names.index("B") + 1) + 1) + 1].count("A") <= 4, names[:10]


def test_every_way_into_pending_holds_a_limited_task(db: Conn) -> None:
    """A task made pending by any writer (a delay running out, retry_now of a failed task, a plain UPDATE of
    its state) waits for its limit like a freshly enqueued one."""
    register_v2(db, [definition("One", concurrency={"limit": 1})], [])
    first = enqueue(db, "One")
    delayed = enqueue(db, "One", {"n": 2}, delay=timedelta(seconds=30))
    failed = enqueue(db, "One", {"n": 3})
    db.execute("select anchor.cancel(%s)", (failed,))
    now = db_now(db)
    assert task(db, delayed)["waiting_for"] == "time"
    (row,) = [r for r in claim_v2(db, "w", 10, now) if r["kind"] == "execute"]
    assert row["id"] == first
    db.execute("select anchor.retry_now(%s)", (failed,))
    assert task(db, failed)["waiting_for"] == "limit"
    # the delay runs out while the slot is taken: the task moves to the held set, not to the ready set
    assert [r for r in claim_v2(db, "w", 10, now + timedelta(seconds=31)) if r["kind"] == "execute"] == []
    assert task(db, delayed)["waiting_for"] == "limit"
    complete_v2(db, [row], "w")
    started = [r["id"] for r in claim_v2(db, "w", 10, now + timedelta(seconds=31)) if r["kind"] == "execute"]
    assert len(started) == 1 and started[0] in (delayed, failed)
