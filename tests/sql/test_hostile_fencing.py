"""The fence token never repeats: every claim (of an execution or of a hook) takes a new one, so a late
call from an execution that lost its claim is 'stale' even when retry_now, hand-back or a released hook
lease gave the same (id, attempt, worker) to a new execution. The v1 functions keep working."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.sql.factories import WORKER, Conn, db_now, definition, enqueue, heartbeat, register, task
from tests.sql.hostile import one


def claim_v2(db: Conn, worker: str = WORKER, now: Any = None) -> list[dict[str, Any]]:
    heartbeat(db, worker, now)
    return db.execute(
        "select * from anchor.claim_v2(%s, 10, p_now => %s) where kind <> 'wake'", (worker, now)
    ).fetchall()


def complete_v2(db: Conn, task_id: int, fence: int, worker: str = WORKER) -> str:
    return str(one(db, "select outcome from anchor.complete_v2(array[%s]::bigint[], array[%s]::bigint[], %s)",
                   (task_id, fence, worker)))


def test_retry_now_after_a_rescue_does_not_let_the_first_execution_complete_the_second(db: Conn) -> None:
    register(db, definition("Job", max_attempts=1))
    task_id = enqueue(db, "Job")
    now = db_now(db)
    (first,) = claim_v2(db, now=now)
    db.execute("select * from anchor.rescue(p_now => %s)", (now + timedelta(minutes=5),))
    assert task(db, task_id)["state"] == "failed"
    db.execute("select anchor.retry_now(%s)", (task_id,))
    (second,) = claim_v2(db)
    assert (second["id"], second["attempt"]) == (first["id"], first["attempt"]) == (task_id, 1)
    assert second["fence"] > first["fence"]
    assert complete_v2(db, task_id, first["fence"]) == "stale"
    assert task(db, task_id)["state"] == "running"
    # the v1 call cannot tell the two apart; that is why the worker uses the fence
    assert complete_v2(db, task_id, second["fence"]) == "succeeded"


def test_a_late_failure_after_a_hand_back_is_stale(db: Conn) -> None:
    register(db, definition("Job", max_attempts=3))
    task_id = enqueue(db, "Job")
    (first,) = claim_v2(db)
    db.execute("select * from anchor.hand_back_v2(array[%s]::bigint[], array[%s]::bigint[], %s)",
               (task_id, first["fence"], WORKER))
    (second,) = claim_v2(db)
    assert second["attempt"] == first["attempt"]
    assert one(db, "select anchor.fail_v2(%s, %s, %s, 'late')", (task_id, first["fence"], WORKER)) == "stale"
    assert one(db, "select anchor.fail_v2(%s, %s, %s, 'now')", (task_id, second["fence"], WORKER)) == "retry"


def test_a_hook_lease_given_back_and_claimed_again_fences_out_the_first_run(db: Conn) -> None:
    register(db, definition("Job", on_failed=True))
    task_id = enqueue(db, "Job")
    (first,) = claim_v2(db)
    assert one(db, "select anchor.fail_v2(%s, %s, %s, 'boom', fatal => true)",
               (task_id, first["fence"], WORKER)) == "failing"
    db.execute("select anchor.deregister_worker(%s)", (WORKER,))  # gives the hook attempt back
    (hook,) = claim_v2(db)
    assert hook["kind"] == "hook" and hook["hook_attempt"] == 1 and hook["fence"] > first["fence"]
    assert one(db, "select anchor.finish_failure_v2(%s, %s, %s)", (task_id, first["fence"], WORKER)) == "stale"
    assert one(db, "select anchor.fail_hook_v2(%s, %s, %s, 'x')", (task_id, first["fence"], WORKER)) == "stale"
    assert one(db, "select anchor.finish_failure_v2(%s, %s, %s)", (task_id, hook["fence"], WORKER)) == "failed"


def test_the_v1_functions_still_fence_by_attempt(db: Conn) -> None:
    register(db, definition("Job", max_attempts=2, on_failed=True))
    done, failed = enqueue(db, "Job"), enqueue(db, "Job")
    heartbeat(db)
    rows = db.execute("select * from anchor.claim(%s, 10) where kind = 'execute' order by id", (WORKER,)).fetchall()
    assert [r["attempt"] for r in rows] == [1, 1] and "fence" not in rows[0]
    outcomes = db.execute("select * from anchor.complete(array[%s, %s]::bigint[], array[1, 2], %s)",
                          (done, failed, WORKER)).fetchall()
    assert [(r["id"], r["outcome"]) for r in outcomes] == [(done, "succeeded"), (failed, "stale")]
    assert one(db, "select anchor.fail(%s, 1, %s, 'boom', fatal => true)", (failed, WORKER)) == "failing"
    assert one(db, "select anchor.finish_failure(%s, 2, %s)", (failed, WORKER)) == "stale"
    assert one(db, "select anchor.finish_failure(%s, 1, %s)", (failed, WORKER)) == "failed"
