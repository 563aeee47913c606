"""Upgrades lose nothing: for every migration N >= 2, a database installed up to N-1 and holding tasks in
every state (made through the SQL functions, never by writing rows) is upgraded to the latest migration;
every row it held is still there, unchanged, and the functions still drive those tasks afterwards.

Each case creates its own database on the test server (and drops it), since the shared fixtures only
hand out fully migrated ones. Populating uses the 0001 function signatures, which later migrations keep
(a changed function gets a versioned name; the old one stays for a release)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from anchor_py.migrate import install, load_migrations
from tests.conftest import SERVER

Conn = psycopg.Connection[dict[str, Any]]
MIGRATIONS = load_migrations()
LATEST = MIGRATIONS[-1].version
WORKER = "old-worker"

DEFINITIONS = [
    # retried, with an onFailed hook
    {
        "name": "Job",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "retry_interval": "1m",
        "max_attempts": 2,
        "on_failed": True,
    },
    # one attempt, no hook
    {"name": "Plain", "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}}},
    # a cron task registered before cron schedules existed in the database
    {
        "name": "Nightly",
        "parameters": {
            "type": "object",
            "required": ["date"],
            "properties": {"date": {"type": "string", "format": "date"}},
        },
        "cron": {"expression": "0 0 2 * * *", "parameters": {}, "timezone": "UTC", "catch_up": 0, "overlap": "skip"},
    },
]


@pytest.fixture
def scratch_dsn() -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    name = f"anchor_upgrade_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SERVER.dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield SERVER.dsn(name)
    finally:
        with psycopg.connect(SERVER.dsn("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def one(db: Conn, query: str, *args: Any) -> Any:
    row = db.execute(query, args).fetchone()
    assert row is not None
    return next(iter(row.values()))


def enqueue(db: Conn, name: str, n: int, **overrides: Any) -> int:
    args = "".join(f", {key} => %({key})s" for key in overrides)
    row = db.execute(
        f"select anchor.enqueue(%(name)s, %(params)s::jsonb{args}) as id",
        {"name": name, "params": json.dumps({"n": n}), **overrides},
    ).fetchone()
    assert row is not None
    return int(row["id"])


def claim_one(db: Conn, name: str) -> dict[str, Any]:
    rows = db.execute(
        "select * from anchor.claim(%s, 1, task_names => array[%s]) where kind <> 'wake'", (WORKER, name)
    ).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def populate(db: Conn) -> dict[str, int]:
    """Tasks in every state, through the functions of the old version; returns an id per state."""
    db.execute("select anchor.register_tasks(%s::jsonb, 1)", (json.dumps(DEFINITIONS),))
    db.execute('select anchor.heartbeat(%s, \'{"host": "old"}\'::jsonb)', (WORKER,))
    ids: dict[str, int] = {}

    ids["running"] = enqueue(db, "Plain", 1)
    assert claim_one(db, "Plain")["id"] == ids["running"]

    ids["succeeded"] = enqueue(db, "Plain", 2)
    work = claim_one(db, "Plain")
    assert one(db, "select outcome from anchor.complete(array[%s]::bigint[], array[%s]::int[], %s)",
               work["id"], work["attempt"], WORKER) == "succeeded"  # fmt: skip

    ids["failed"] = enqueue(db, "Plain", 3)
    work = claim_one(db, "Plain")
    assert (
        one(db, "select anchor.fail(%s, %s, %s, error_message => 'boom')", work["id"], work["attempt"], WORKER)
        == "failed"
    )

    ids["failing"] = enqueue(db, "Job", 4, max_attempts=1)
    work = claim_one(db, "Job")
    assert one(db, "select anchor.fail(%s, %s, %s, error_message => 'boom', error_type => 'ValueError')",
               work["id"], work["attempt"], WORKER) == "failing"  # fmt: skip

    ids["hook_failed"] = enqueue(db, "Job", 5, max_attempts=1)
    work = claim_one(db, "Job")
    assert one(db, "select anchor.fail(%s, %s, %s, fatal => true)", work["id"], work["attempt"], WORKER) == "failing"
    assert one(db, "select anchor.fail_hook(%s, 1, %s, 'hook broke', max_hook_attempts => 1)",
               work["id"], WORKER) == "hook_failed"  # fmt: skip

    ids["retrying"] = enqueue(db, "Job", 6)
    work = claim_one(db, "Job")
    assert (
        one(db, "select anchor.fail(%s, %s, %s, error_message => 'transient')", work["id"], work["attempt"], WORKER)
        == "retry"
    )

    ids["cancelled"] = enqueue(db, "Plain", 7, delay=timedelta(hours=1))
    assert one(db, "select anchor.cancel(%s)", ids["cancelled"]) == "cancelled"

    ids["cancel_requested"] = enqueue(db, "Job", 8)
    assert claim_one(db, "Job")["id"] == ids["cancel_requested"]
    assert one(db, "select anchor.cancel(%s)", ids["cancel_requested"]) == "cancel_requested"

    ids["pending"] = enqueue(db, "Plain", 9)
    ids["unique"] = enqueue(db, "Plain", 10, unique_tag="daily-10", delay=timedelta(minutes=5))

    states = {r["id"]: r["state"] for r in db.execute("select id, state from anchor.tasks").fetchall()}
    every_state = ("pending", "running", "succeeded", "failing", "failed", "hook_failed", "cancelled")
    assert {states[ids[s]] for s in every_state} == set(every_state)
    return ids


def snapshot(db: Conn) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table in schema anchor, as JSON, in a stable order."""
    tables = [r["table_name"] for r in db.execute(
        "select table_name from information_schema.tables where table_schema = 'anchor' and table_type = 'BASE TABLE'"
    ).fetchall()]  # fmt: skip
    result = {}
    for table in sorted(tables):
        rows = db.execute(
            sql.SQL("select to_jsonb(t) as row from anchor.{} as t").format(sql.Identifier(table))
        ).fetchall()
        result[table] = sorted((r["row"] for r in rows), key=lambda row: json.dumps(row, sort_keys=True))
    return result


@pytest.mark.parametrize("version", [m.version for m in MIGRATIONS if m.version >= 2])
def test_upgrade_to_latest_keeps_every_task_and_the_functions_work(scratch_dsn: str, version: int) -> None:
    assert [m.version for m in install(scratch_dsn, target=version - 1)] == list(range(1, version))
    with psycopg.connect(scratch_dsn, autocommit=True, row_factory=dict_row) as db:
        ids = populate(db)
        before = snapshot(db)

    applied = install(scratch_dsn)
    assert [m.version for m in applied] == list(range(version, LATEST + 1))
    assert install(scratch_dsn) == [], "re-running applies nothing"

    with psycopg.connect(scratch_dsn, autocommit=True, row_factory=dict_row) as db:
        after = snapshot(db)
        for table, rows in before.items():
            assert table in after, f"table anchor.{table} disappeared"
            # compare on the columns the old version had: a migration may add columns, never change data
            kept = sorted(
                ({key: row[key] for key in rows[0]} if rows else row for row in after[table]),
                key=lambda row: json.dumps(row, sort_keys=True),
            )
            if table in ("tasks", "task_events"):
                assert kept == rows, f"anchor.{table} changed in the upgrade"
            else:
                # configuration tables may gain rows (a new migration, a new function's role): none is lost
                lost = [row for row in rows if row not in kept]
                assert lost == [], f"anchor.{table} lost rows in the upgrade: {lost}"
        exercise(db, ids)


def exercise(db: Conn, ids: dict[str, int]) -> None:
    """The functions still drive the old rows to their ends after the upgrade."""
    state = lambda task_id: one(db, "select state from anchor.tasks where id = %s", task_id)  # noqa: E731

    # the running task finishes for its old worker
    attempt = one(db, "select attempts from anchor.tasks where id = %s", ids["running"])
    assert one(db, "select outcome from anchor.complete(array[%s]::bigint[], array[%s]::int[], %s)",
               ids["running"], attempt, WORKER) == "succeeded"  # fmt: skip
    # the failing task's hook commits with the failure
    assert one(db, "select anchor.finish_failure(%s, 1, %s)", ids["failing"], WORKER) == "failed"
    # operator actions on finished tasks
    assert one(db, "select anchor.retry_hook(%s)", ids["hook_failed"]) == "failing"
    assert one(db, "select anchor.retry_now(%s)", ids["failed"]) == "pending"
    assert one(db, "select anchor.retry_now(%s)", ids["cancelled"]) == "pending"
    # the cancel request reaches the old worker through its heartbeat
    assert ids["cancel_requested"] in one(db, "select anchor.heartbeat(%s)", WORKER)
    # a duplicate unique tag still returns the live task
    assert enqueue(db, "Plain", 11, unique_tag="daily-10") == ids["unique"]

    # a new worker claims the due work: the retried hook and the pending tasks
    db.execute("select anchor.heartbeat('new-worker')")
    claimed = db.execute("select * from anchor.claim('new-worker', 10) where kind <> 'wake'").fetchall()
    claimed_ids = {r["id"] for r in claimed}
    assert {ids["hook_failed"], ids["pending"], ids["failed"], ids["cancelled"]} <= claimed_ids
    for row in claimed:
        if row["kind"] == "execute":
            assert one(db, "select outcome from anchor.complete(array[%s]::bigint[], array[%s]::int[], 'new-worker')",
                       row["id"], row["attempt"]) == "succeeded"  # fmt: skip
    assert state(ids["pending"]) == "succeeded" and state(ids["failed"]) == "succeeded"

    # new work and a new registration go through
    new_id = enqueue(db, "Job", 12)
    assert state(new_id) == "pending"
    assert one(db, "select anchor.register_tasks(%s::jsonb, 2)", json.dumps(DEFINITIONS)) == "applied"
    assert db.execute("select * from anchor.rescue()").fetchall() == []

    if one(db, "select to_regclass('anchor.cron_schedules') is not null"):
        # the cron task registered before the upgrade has its schedule, ready to be computed and fired
        due = db.execute("select * from anchor.cron_take_due()").fetchall()
        assert [(r["name"], r["expression"], r["next_fire_at"]) for r in due] == [("Nightly", "0 0 2 * * *", None)]
