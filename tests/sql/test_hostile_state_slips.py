"""Small state slips: every transition leaves a row consistent with its state, and a batch reports each
execution once."""

from __future__ import annotations

from tests.sql.factories import (
    WORKER,
    Conn,
    claim,
    definition,
    enqueue,
    register,
    register_state_tasks,
    task,
    task_in_state,
)
from tests.sql.hostile import one


def test_handing_back_a_task_whose_cancel_was_requested_cancels_it(db: Conn) -> None:
    register(db, definition("Job"))
    task_id = enqueue(db, "Job")
    (row,) = claim(db)
    db.execute("select anchor.cancel(%s)", (task_id,))
    outcomes = db.execute("select * from anchor.hand_back(array[%s]::bigint[], array[%s], %s)",
                          (task_id, row["attempt"], WORKER)).fetchall()
    assert [(r["id"], r["outcome"]) for r in outcomes] == [(task_id, "cancelled")]
    after = task(db, task_id)
    assert (after["state"], after["locked_by"]) == ("cancelled", None) and after["finished_at"] is not None


def test_a_failed_task_holds_no_lock(db: Conn) -> None:
    register_state_tasks(db)
    task_id = task_in_state(db, "failed")
    assert task(db, task_id)["locked_by"] is None


def test_an_id_given_twice_to_complete_succeeds_once(db: Conn) -> None:
    register(db, definition("Job"))
    task_id = enqueue(db, "Job")
    (row,) = claim(db)
    outcomes = db.execute("select * from anchor.complete(array[%s, %s]::bigint[], array[%s, %s], %s)",
                          (task_id, task_id, row["attempt"], row["attempt"], WORKER)).fetchall()
    assert [r["outcome"] for r in outcomes] == ["succeeded", "stale"]
    assert one(db, "select count(*) from anchor.task_events where task_id = %s", (task_id,)) == 0
