"""Rate limits hold inside the claim: never more starts in any window of `period` than the limit, counting
every start (first attempts, retries, rescued tasks), per name, per key and per queue, and under races; the
claim's wake row tells when the next start is allowed."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
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
    task,
)


def busiest_window(starts: list[datetime], period: timedelta) -> int:
    """The most starts in any window [t, t + period)."""
    starts = sorted(starts)
    return max((sum(1 for s in starts if t <= s < t + period) for t in starts), default=0)


def step_through(
    db: Conn, t0: datetime, seconds: int, *, step: float = 0.5, fail: Any = None, dead_every: int = 0
) -> list[tuple[datetime, dict[str, Any]]]:
    """Claims at t0, t0 + step, ... for `seconds`, as worker 'w' (heartbeating) and every `dead_every` steps
    as a worker that dies ('dead': it never heartbeats, so the next step's rescue takes its tasks back);
    completes or, when `fail(row)` says so, fails each execution. Returns every start with its row."""
    starts: list[tuple[datetime, dict[str, Any]]] = []
    for i in range(int(seconds / step)):
        now = t0 + timedelta(seconds=i * step)
        db.execute("select anchor.heartbeat_v2('w', '{}', p_now => %s)", (now,))
        db.execute("select anchor.rescue(heartbeat_timeout => '5 seconds', p_now => %s)", (now,))
        worker = "dead" if dead_every and i % dead_every == 0 else "w"
        rows = [r for r in claim_v2(db, worker, 10, now) if r["kind"] == "execute"]
        starts += [(now, r) for r in rows]
        if worker == "dead":
            continue
        for row in rows:
            if fail is not None and fail(row):
                db.execute("select anchor.fail_v2(%s, %s, 'w', 'boom', p_now => %s)", (row["id"], row["fence"], now))
            else:
                assert complete_v2(db, [row], "w") == ["succeeded"]
    return starts


def test_a_rate_of_3_per_10s_is_never_exceeded_and_is_reached(db: Conn) -> None:
    register_v2(db, [definition("Api", rate_limit={"limit": 3, "period": "10s"})], [])
    for n in range(30):
        enqueue(db, "Api", {"n": n})
    t0 = db_now(db)
    starts = [s for s, _ in step_through(db, t0, 120)]
    assert len(starts) == 30
    assert busiest_window(starts, timedelta(seconds=10)) == 3
    # the limit is a bound, not a slowdown: three start at once, then three every 10 s
    assert starts[:3] == [t0] * 3
    assert max(starts) == t0 + timedelta(seconds=90)


def test_retries_and_rescued_tasks_count_as_starts(db: Conn) -> None:
    register_v2(
        db, [definition("Api", rate_limit={"limit": 4, "period": "5s"}, retry_interval="1s", max_attempts=-1)], []
    )
    for n in range(40):
        enqueue(db, "Api", {"n": n})
    t0 = db_now(db)
    starts = step_through(db, t0, 200, fail=lambda row: row["attempt"] == 1 and row["id"] % 2 == 0, dead_every=7)
    attempts = [row["attempt"] for _, row in starts]
    assert max(attempts) >= 2  # retried and rescued tasks started again
    assert db.execute("select count(*) as n from anchor.tasks where state = 'succeeded'").fetchone() == {"n": 40}
    assert db.execute("select count(*) as n from anchor.tasks where rescues > 0").fetchone()["n"] > 0  # type: ignore[index]
    assert busiest_window([s for s, _ in starts], timedelta(seconds=5)) == 4


def test_a_keyed_rate_limits_each_key_alone(db: Conn) -> None:
    register_v2(db, [keyed_definition("Sync", rate_limit={"limit": 2, "period": "10s", "key": "account"})], [])
    for n in range(6):
        for account in ("a", "b"):
            enqueue(db, "Sync", {"account": account, "n": n})
    t0 = db_now(db)
    starts = step_through(db, t0, 40)
    assert len(starts) == 12
    for account in ("a", "b"):
        mine = [s for s, row in starts if task(db, row["id"])["flow_key"] == f'"{account}"']
        assert busiest_window(mine, timedelta(seconds=10)) == 2
        assert mine[:2] == [t0, t0]  # each key starts at once: the other's backlog does not delay it


def test_a_queue_rate_counts_every_name_and_the_wake_row_tells_when(db: Conn) -> None:
    register_v2(
        db,
        [definition("A", queue="q"), definition("B", queue="q")],
        [{"name": "q", "rate_limit": {"limit": 4, "period": "1m"}}],
    )
    for n in range(5):
        enqueue(db, "A", {"n": n})
        enqueue(db, "B", {"n": n})
    t0 = db_now(db)
    rows = claim_v2(db, "w", 10, t0)
    assert [r["kind"] for r in rows] == ["execute"] * 4 + ["wake"]
    complete_v2(db, rows[:4], "w")
    later = t0 + timedelta(seconds=30)
    rows = claim_v2(db, "w", 10, later)
    # nothing may start before the window of the first starts has passed, and the wake row says when
    assert [(r["kind"], r["run_at"]) for r in rows] == [("wake", t0 + timedelta(minutes=1))]
    rows = claim_v2(db, "w", 10, t0 + timedelta(minutes=1))
    assert [r["kind"] for r in rows] == ["execute"] * 4 + ["wake"]
    starts = db.execute("select locked_at from anchor.tasks where locked_at is not null").fetchall()
    assert busiest_window([r["locked_at"] for r in starts], timedelta(minutes=1)) == 4


def test_a_rate_holds_against_concurrent_claimers_in_real_time(db: Conn, dsn: str) -> None:
    register_v2(db, [definition("Api", rate_limit={"limit": 5, "period": "1s"})], [])
    for n in range(25):
        enqueue(db, "Api", {"n": n})
    errors: list[BaseException] = []
    starts: list[datetime] = []
    lock = threading.Lock()

    def run(worker: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    rows = [r for r in claim_v2(conn, worker, 3) if r["kind"] == "execute"]
                    if rows:
                        got = conn.execute(
                            "select locked_at from anchor.tasks where id = any(%s)", ([r["id"] for r in rows],)
                        ).fetchall()
                        with lock:
                            starts.extend(r["locked_at"] for r in got)
                        complete_v2(conn, rows, worker)
                    elif conn.execute("select count(*) as n from anchor.tasks where state = 'pending'").fetchone() == {
                        "n": 0
                    }:
                        return
                    else:
                        time.sleep(0.01)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(starts) == 25
    assert busiest_window(starts, timedelta(seconds=1)) == 5


def test_prune_forgets_keyed_rate_rings_once_their_period_has_passed(db: Conn) -> None:
    register_v2(db, [keyed_definition("Sync", rate_limit={"limit": 2, "period": "1m", "key": "account"})], [])
    for account in ("a", "b", "c"):
        enqueue(db, "Sync", {"account": account})
    t0 = db_now(db)
    assert len([r for r in claim_v2(db, "w", 10, t0) if r["kind"] == "execute"]) == 3

    def rings() -> int:
        row = db.execute("select count(*) as n from anchor.flow_scopes where kind = 'key'").fetchone()
        assert row is not None
        return int(row["n"])

    assert rings() == 3
    db.execute("select anchor.prune(p_now => %s)", (t0 + timedelta(seconds=59),))
    assert rings() == 3  # still within their window: they are what limits the next starts
    db.execute("select anchor.prune(p_now => %s)", (t0 + timedelta(minutes=1),))
    assert rings() == 0
    assert db.execute("select count(*) as n from anchor.flow_starts").fetchone() == {"n": 0}
    # a key seen again starts a new ring
    enqueue(db, "Sync", {"account": "a"})
    assert len([r for r in claim_v2(db, "w", 10, t0 + timedelta(minutes=2)) if r["kind"] == "execute"]) == 1
    assert rings() == 1
