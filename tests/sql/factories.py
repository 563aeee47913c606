"""Row factories for SQL-core tests: register definitions, enqueue, and drive tasks into each state through
the core's own functions (never by writing rows directly), so every state is one the core can produce."""

from __future__ import annotations

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


def enqueue(db: Conn, name: str, params: dict[str, Any] | None = None, **overrides: Any) -> int:
    args = ", ".join(f"{key} => %({key})s" for key in overrides)
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
    if state == "blocked":  # waiting for a live task: the newest one there is, else one of its own
        row = db.execute("select max(id) as id from anchor.tasks where state in ('pending', 'running')").fetchone()
        dependency = row["id"] if row and row["id"] else enqueue(db, name, {"n": 0}, queue=queue)
        return enqueue(db, name, {"n": 1}, queue=queue, depends_on=[dependency])
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


ALL_STATES = ("pending", "running", "succeeded", "failing", "failed", "hook_failed", "cancelled")


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
