"""Row factories for SQL-core tests: register definitions, enqueue, and drive tasks into each state through
the core's own functions (never by writing rows directly), so every state is one the core can produce."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from typing import Any

import psycopg

Conn = psycopg.Connection[dict[str, Any]]
WORKER = "worker-1"


def definition(name: str, **fields: Any) -> dict[str, Any]:
    """A task definition as register_tasks takes it; parameters default to a schema with one int `n`."""
    return {
        "name": name,
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
        **fields,
    }


def register(db: Conn, *definitions: dict[str, Any], version: int = 1) -> str:
    row = db.execute(
        "select anchor.register_tasks(%s::jsonb, %s) as outcome", (json.dumps(list(definitions)), version)
    ).fetchone()
    assert row is not None
    return str(row["outcome"])


# the overrides whose Python value psycopg cannot type on its own (a list of ints may go as smallint[])
CASTS = {"depends_on": "::bigint[]", "parent_id": "::bigint"}


def enqueue(db: Conn, name: str, params: dict[str, Any] | None = None, **overrides: Any) -> int:
    args = ", ".join(f"{key} => %({key})s{CASTS.get(key, '')}" for key in overrides)
    row = db.execute(
        f"select anchor.enqueue(%(name)s, %(params)s::jsonb{', ' + args if args else ''}) as id",
        {"name": name, "params": json.dumps(params or {}), **overrides},
    ).fetchone()
    assert row is not None
    return int(row["id"])


def claim(
    db: Conn, worker: str = WORKER, max_tasks: int = 10, now: datetime | None = None, **kw: Any
) -> list[dict[str, Any]]:
    """Claimed work rows (execute and hook), without the trailing wake row."""
    return [r for r in claim_rows(db, worker, max_tasks, now, **kw) if r["kind"] != "wake"]


def claim_rows(
    db: Conn, worker: str = WORKER, max_tasks: int = 10, now: datetime | None = None, **kw: Any
) -> list[dict[str, Any]]:
    heartbeat(db, worker, now)
    args = "".join(f", {key} => %({key})s" for key in kw)
    return db.execute(
        f"select * from anchor.claim(%(worker)s, %(max)s, p_now => %(now)s{args})",
        {"worker": worker, "max": max_tasks, "now": now, **kw},
    ).fetchall()


def heartbeat(db: Conn, worker: str = WORKER, now: datetime | None = None) -> list[int]:
    """The worker heartbeats holding every task locked by it (so nothing is handed back); returns the held
    tasks whose cancel was requested."""
    row = db.execute(
        "select anchor.heartbeat_v2(%(worker)s, array(select t.id from anchor.tasks t where t.locked_by = %(worker)s),"
        " p_now => %(now)s) as ids",
        {"worker": worker, "now": now},
    ).fetchone()
    assert row is not None
    return list(row["ids"])


def fail(db: Conn, task_id: int, attempt: int, worker: str = WORKER, now: datetime | None = None, **kw: Any) -> str:
    kw = {"error_message": "boom", **kw}
    args = "".join(f", {key} => %({key})s" for key in kw)
    row = db.execute(
        f"select anchor.fail(%(id)s, %(attempt)s, %(worker)s, p_now => %(now)s{args}) as outcome",
        {"id": task_id, "attempt": attempt, "worker": worker, "now": now, **kw},
    ).fetchone()
    assert row is not None
    return str(row["outcome"])


def complete(db: Conn, task_id: int, attempt: int, worker: str = WORKER) -> str:
    row = db.execute(
        "select outcome from anchor.complete(array[%s]::bigint[], array[%s]::int[], %s)", (task_id, attempt, worker)
    ).fetchone()
    assert row is not None
    return str(row["outcome"])


def task(db: Conn, task_id: int) -> dict[str, Any]:
    row = db.execute("select * from anchor.tasks where id = %s", (task_id,)).fetchone()
    assert row is not None, f"task {task_id} does not exist"
    return row


def events(db: Conn, task_id: int) -> list[dict[str, Any]]:
    return db.execute("select * from anchor.task_events where task_id = %s order by id", (task_id,)).fetchall()


def db_now(db: Conn) -> datetime:
    row = db.execute("select now() as now").fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]


def later(db: Conn, seconds: float) -> datetime:
    return db_now(db) + timedelta(seconds=seconds)


def task_in_state(db: Conn, state: str, name: str = "Job") -> int:
    """A task of `name` (registered with a hook and 2 attempts by `register_state_tasks`) driven into `state`."""
    queue = f"queue-{state}-{db.execute('select count(*) as n from anchor.tasks').fetchone()['n']}"  # type: ignore[index]
    if state == "blocked":
        # waiting for a pending task of its own queue, so no other test's claim completes the dependency
        return enqueue(db, name, {"n": 1}, queue=queue, depends_on=[enqueue(db, name, {"n": 0}, queue=queue)])
    task_id = enqueue(db, name, {"n": 1}, queue=queue)
    if state == "pending":
        return task_id
    if state == "paused":
        db.execute("select * from anchor.pause_task(%s)", (task_id,))
        return task_id
    if state == "cancelled":
        db.execute("select anchor.cancel(%s)", (task_id,))
        return task_id
    (row,) = claim(db, queues=[queue])
    if state == "running":
        return task_id
    if state == "succeeded":
        complete(db, task_id, row["attempt"])
        return task_id
    outcome = fail(db, task_id, row["attempt"], fatal=True)
    assert outcome == "failing"
    if state == "failing":
        return task_id
    if state == "failed":
        db.execute("select anchor.finish_failure(%s, 1, %s)", (task_id, WORKER))
        return task_id
    if state == "hook_failed":
        db.execute("select anchor.fail_hook(%s, 1, %s, 'hook broke', max_hook_attempts => 1)", (task_id, WORKER))
        return task_id
    raise ValueError(state)


def register_state_tasks(db: Conn) -> None:
    register(db, definition("Job", retry_interval="1s", max_attempts=2, on_failed=True))


ALL_STATES = ("pending", "running", "succeeded", "failing", "failed", "hook_failed", "cancelled", "blocked", "paused")


def nested_plans(db: Conn, statement: str) -> tuple[list[dict[str, Any]], str]:
    """Runs `statement` and returns its rows and the plans of every statement run inside the functions it
    calls (auto_explain: a function's statements are planned inside it, so EXPLAIN of the call hides them)."""
    notices: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(diag.message_primary or "")

    db.add_notice_handler(collect)
    try:
        with db.transaction():
            db.execute("load 'auto_explain'")
            db.execute("set local auto_explain.log_min_duration = 0")
            db.execute("set local auto_explain.log_nested_statements = on")
            db.execute("set local auto_explain.log_level = notice")
            rows = db.execute(statement).fetchall()
    finally:
        db.remove_notice_handler(collect)
    return rows, "\n".join(notices)


# Workflows -------------------------------------------------------------------------------------------

_queues = itertools.count(1)


def add(db: Conn, name: str = "Step", params: dict[str, Any] | None = None, **overrides: Any) -> int:
    """enqueue in a queue of its own, so `start` can claim exactly this task."""
    return enqueue(db, name, params or {"n": 1}, queue=f"wf-{next(_queues)}", **overrides)


def start(db: Conn, task_id: int, worker: str = WORKER, now: datetime | None = None) -> int:
    """Claims this task (made by `add`, due) as `worker` with claim_v2; returns the claim's fence."""
    heartbeat(db, worker, now)
    rows = db.execute(
        "select id, fence from anchor.claim_v2(%s, 1, queues => array[%s], p_now => %s) where kind = 'execute'",
        (worker, task(db, task_id)["queue"], now),
    ).fetchall()
    assert [r["id"] for r in rows] == [task_id], f"task {task_id} was not claimable: {task(db, task_id)['state']}"
    return int(rows[0]["fence"])


def succeed(db: Conn, task_id: int, result: Any = None, now: datetime | None = None, worker: str = WORKER) -> None:
    """Claims the task and completes it (storing `result` first when given), as a worker does."""
    fence = start(db, task_id, worker, now)
    with db.transaction():
        if result is not None:
            db.execute(
                "select anchor.record_results(array[%s]::bigint[], array[%s]::bigint[], array[%s]::jsonb[], %s)",
                (task_id, fence, json.dumps(result), worker),
            )
        row = db.execute(
            "select outcome from anchor.complete_v2(array[%s]::bigint[], array[%s]::bigint[], %s, %s)",
            (task_id, fence, worker, now),
        ).fetchone()
    assert row is not None and row["outcome"] == "succeeded"


def fail_now(db: Conn, task_id: int, fatal: bool = True, now: datetime | None = None, worker: str = WORKER) -> str:
    """Claims the task and fails the attempt (finally, unless fatal is False); returns fail_v2's outcome."""
    fence = start(db, task_id, worker, now)
    row = db.execute(
        "select anchor.fail_v2(%s, %s, %s, 'boom', fatal => %s, p_now => %s) as outcome",
        (task_id, fence, worker, fatal, now),
    ).fetchone()
    assert row is not None
    return str(row["outcome"])


def outcomes(db: Conn, call: str, task_id: int, now: datetime | None = None) -> dict[int, str]:
    """What cancel_tree, pause_task or resume_task changed: task id -> outcome."""
    rows = db.execute(f"select * from anchor.{call}(%s, %s)", (task_id, now)).fetchall()
    return {r["task_id"]: r["outcome"] for r in rows}


def states(db: Conn, *task_ids: int) -> list[str]:
    return [task(db, task_id)["state"] for task_id in task_ids]
