"""Upgrades lose nothing: a database at a release's schema version (0.1.0: the baseline, migrations 0001 to
0009), or at the migration before the newest one, holding tasks in every state the schema allows, cron
schedules (one fired, one paused) and workers, made through the release's own SQL functions, never by writing
rows, is upgraded with every later migration; every row it held is still there, unchanged, and the functions
still drive those tasks to their ends. The later migrations are whatever sql/migrations holds past the
release, so each new migration is tested here without touching this file; while there is none, the upgrade
applies nothing and the test checks the baseline itself.

Populating and driving use the 0.1.0 signatures (the worker of the previous release keeps calling them
during a rolling deploy); when a later release drops one of them after its one-release overlap, that
release moves these calls to the versioned twin.

Each case creates its own database on the test server (and drops it), since the shared fixtures only
hand out fully migrated ones."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from anchor_py.migrate import MigrationError, install, load_migrations
from tests.conftest import SERVER

Conn = psycopg.Connection[dict[str, Any]]
MIGRATIONS = load_migrations()
LATEST = MIGRATIONS[-1].version
WORKER = "old-worker"
CHANGELOG = Path(__file__).resolve().parents[2] / "CHANGELOG.md"

# The released baseline: these files never change again (the installer would refuse a database that
# applied them); a change to the schema is a new migration.
BASELINE_0_1_0 = {
    1: ("schema", "9e19473cf20fb7428479d7a0efb7843277ddd31f343bd3f45c4aaacc729331a3"),
    2: ("parameter_validation", "ccfe7e68f065296832cd5aa242de21c62d1162b8cbe40d519e4edf80216f2497"),
    3: ("registration_and_enqueue", "ea271360de70b646f1fd5823b5e6ff2bccf82b655cb8b27c000e2be20dd33604"),
    4: ("claim_and_finishing", "8ae53350961c34ef1ceaa8721870569a0dbc1fddab35d9ff4ba338424d4b0b03"),
    5: ("operator_actions", "448350c63edae040c4e9d0889bf2fa3a63709958ee9f2dffb6993c01579d4010"),
    6: ("rescue_and_heartbeat", "5437dda1e70a18b7443de021b072b538875ae7e4918773c7bef07bdd6da71e8d"),
    7: ("cron", "b845dd6ca6cdc5a23bf84fc49559798feed48d4567a2d7892fb6c765c76c0e49"),
    8: ("retention", "38f94e894e95f7ba56bc5f82bd23bdab997e2e3fc3796348cdd1ca87f565975b"),
    9: ("roles", "6f334c1d1ec8fc093fa8ca2a329a2cdfa7cde319868f921dc8802d89c9f958cd"),
}


def release_schema_versions() -> dict[str, int]:
    """Release -> schema version, as CHANGELOG.md states them ('## 0.1.0' ... '**Schema version: 9**')."""
    found = re.findall(r"^## (\d+\.\d+\.\d+)\b.*?\n\*\*Schema version: (\d+)\*\*", CHANGELOG.read_text(), re.M | re.S)
    return {release: int(version) for release, version in found}


RELEASES = release_schema_versions()
# Each release, and the migration before the latest (a deploy of the branch before its newest migration)
# when no release ends there: the newest migration always meets a database holding every older state.
STARTS = RELEASES | ({} if LATEST - 1 in RELEASES.values() else {f"migration {LATEST - 1:04d}": LATEST - 1})

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
    # cron tasks: one fired once before the upgrade, one paused by an operator
    {
        "name": "Nightly",
        "parameters": {
            "type": "object",
            "required": ["date"],
            "properties": {"date": {"type": "string", "format": "date"}},
        },
        "cron": {"expression": "0 0 2 * * *", "parameters": {}, "timezone": "UTC", "catch_up": 0, "overlap": "skip"},
    },
    {"name": "Weekly", "cron": {"expression": "0 0 3 * * 1", "timezone": "Europe/Berlin"}},
]


def test_the_0_1_0_baseline_is_released_and_unchanged() -> None:
    assert RELEASES.get("0.1.0") == len(BASELINE_0_1_0), f"CHANGELOG.md's 0.1.0 schema version: {RELEASES}"
    shipped = {m.version: (m.name, m.checksum) for m in MIGRATIONS if m.version in BASELINE_0_1_0}
    changed = [f"{v:04d}_{BASELINE_0_1_0[v][0]}" for v in BASELINE_0_1_0 if shipped.get(v) != BASELINE_0_1_0[v]]
    assert changed == [], f"released migrations changed: {changed}; add a new migration instead"


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
    casts = {"depends_on": "::bigint[]", "parent_id": "::bigint"}
    args = "".join(f", {key} => %({key})s{casts.get(key, '')}" for key in overrides)
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


def heartbeat(db: Conn, worker: str, held: list[int]) -> list[int]:
    return list(one(db, 'select anchor.heartbeat_v2(%s, %s::bigint[], \'{"host": "old"}\')', worker, held))


def fire_cron(db: Conn, name: str, expected: datetime | None, fire_times: list[datetime], next_at: datetime,
              now: datetime, params: list[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    return db.execute(
        """select * from anchor.cron_fire(name => %s, expected_next_fire_at => %s, fire_times => %s::timestamptz[],
        fire_params => %s::jsonb, next_fire_at => %s, missed => 0, p_now => %s)""",
        (name, expected, fire_times, json.dumps(params), next_at, now),
    ).fetchall()


def task_states(db: Conn) -> set[str]:
    """The states anchor.tasks allows, read from its check constraint (a later state must be populated too)."""
    definition = one(db, "select pg_get_constraintdef(oid) from pg_constraint where conname = 'tasks_state_check'")
    return set(re.findall(r"'(\w+)'", definition))


def populate(db: Conn) -> dict[str, int]:
    """Tasks in every state, cron schedules and workers, through the release's functions; ids by name."""
    db.execute("select anchor.register_tasks(%s::jsonb, 1)", (json.dumps(DEFINITIONS),))
    heartbeat(db, WORKER, [])
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

    # Nightly fired once (its task pending, its fire recorded, its next fire a day ahead); Weekly paused
    now = one(db, "select now()")
    assert fire_cron(db, "Nightly", None, [], now - timedelta(minutes=1), now - timedelta(minutes=2), []) == []
    (fired,) = fire_cron(db, "Nightly", now - timedelta(minutes=1), [now - timedelta(minutes=1)],
                         now + timedelta(days=1), now, [{"date": "2026-01-31"}])  # fmt: skip
    assert fired["outcome"] == "enqueued"
    ids["cron_fired"] = fired["task_id"]
    assert one(db, "select anchor.cron_pause('Weekly')") == "paused"

    if {"blocked", "paused"} <= task_states(db):
        # the workflow states, where the schema has them: a task waiting for the pending one, a paused one
        ids["blocked"] = enqueue(db, "Plain", 13, depends_on=[ids["pending"]])
        ids["paused"] = enqueue(db, "Plain", 14)
        db.execute("select * from anchor.pause_task(%s)", (ids["paused"],))

    states = {r["id"]: r["state"] for r in db.execute("select id, state from anchor.tasks").fetchall()}
    assert set(states.values()) == task_states(db), "populate must hold a task in every state the schema allows"
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


@pytest.mark.parametrize("release", sorted(STARTS))
def test_upgrading_a_release_keeps_every_row_and_the_functions_drive_them(scratch_dsn: str, release: str) -> None:
    version = STARTS[release]
    assert [m.version for m in install(scratch_dsn, target=version)] == list(range(1, version + 1))
    with psycopg.connect(scratch_dsn, autocommit=True, row_factory=dict_row) as db:
        ids = populate(db)
        before = snapshot(db)

    applied = install(scratch_dsn)
    assert [m.version for m in applied] == list(range(version + 1, LATEST + 1)), "every later migration runs"
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
            if table in ("tasks", "task_events", "cron_schedules", "cron_fires", "workers"):
                assert kept == rows, f"anchor.{table} changed in the upgrade"
            else:
                # configuration tables may gain rows (a new migration, a new function's role): none is lost
                lost = [row for row in rows if row not in kept]
                assert lost == [], f"anchor.{table} lost rows in the upgrade: {lost}"
        exercise(db, ids)


def exercise(db: Conn, ids: dict[str, int]) -> None:
    """The functions still drive the old rows to their ends after the upgrade."""
    state = lambda task_id: one(db, "select state from anchor.tasks where id = %s", task_id)  # noqa: E731

    # the old worker heartbeats holding its tasks and hook lease; the cancel request reaches it
    held = [ids["running"], ids["cancel_requested"], ids["failing"]]
    assert heartbeat(db, WORKER, held) == [ids["cancel_requested"]]
    # the running task finishes for its old worker
    attempt = one(db, "select attempts from anchor.tasks where id = %s", ids["running"])
    assert one(db, "select outcome from anchor.complete(array[%s]::bigint[], array[%s]::int[], %s)",
               ids["running"], attempt, WORKER) == "succeeded"  # fmt: skip
    assert one(db, "select anchor.fail(%s, 1, %s, error_message => 'cancelled')", ids["cancel_requested"],
               WORKER) == "cancelled"  # fmt: skip
    # the failing task's hook commits with the failure
    assert one(db, "select anchor.finish_failure(%s, 1, %s)", ids["failing"], WORKER) == "failed"
    # operator actions on finished tasks
    assert one(db, "select anchor.retry_hook(%s)", ids["hook_failed"]) == "failing"
    assert one(db, "select anchor.retry_now(%s)", ids["failed"]) == "pending"
    assert one(db, "select anchor.retry_now(%s)", ids["cancelled"]) == "pending"
    # a duplicate unique tag still returns the live task
    assert enqueue(db, "Plain", 11, unique_tag="daily-10") == ids["unique"]

    # a new worker claims the due work: the retried hook, the pending tasks, the cron task, and completes it
    heartbeat(db, "new-worker", [])
    claimed = db.execute("select * from anchor.claim('new-worker', 10) where kind <> 'wake'").fetchall()
    claimed_ids = {r["id"] for r in claimed}
    assert {ids["hook_failed"], ids["pending"], ids["failed"], ids["cancelled"], ids["cron_fired"]} <= claimed_ids
    for row in claimed:
        if row["kind"] == "execute":
            assert one(db, "select outcome from anchor.complete(array[%s]::bigint[], array[%s]::int[], 'new-worker')",
                       row["id"], row["attempt"]) == "succeeded"  # fmt: skip
        else:
            assert one(db, "select anchor.finish_failure(%s, %s, 'new-worker')", row["id"], row["hook_attempt"]) == (
                "failed"
            )
    for name in ("pending", "failed", "cancelled", "cron_fired"):
        assert state(ids[name]) == "succeeded", name
    assert state(ids["hook_failed"]) == "failed"

    # new work and a new registration go through
    new_id = enqueue(db, "Job", 12)
    assert state(new_id) == "pending"
    assert one(db, "select anchor.register_tasks(%s::jsonb, 2)", json.dumps(DEFINITIONS)) == "applied"
    assert db.execute("select * from anchor.rescue()").fetchall() == []

    # the schedules kept their state: Nightly fired with its next fire a day ahead, Weekly paused until resumed
    schedules = {r["name"]: r for r in db.execute("select * from anchor.cron_list()").fetchall()}
    assert (schedules["Nightly"]["paused"], schedules["Nightly"]["last_task_id"]) == (False, ids["cron_fired"])
    assert schedules["Weekly"]["paused"]
    assert one(db, "select anchor.cron_resume('Weekly')") == "resumed"
    due_at = schedules["Nightly"]["next_fire_at"] + timedelta(seconds=1)
    due = db.execute("select name from anchor.cron_take_due(p_now => %s)", (due_at,)).fetchall()
    assert sorted(r["name"] for r in due) == ["Nightly", "Weekly"]

    exercise_workflows(db, ids)


def exercise_workflows(db: Conn, ids: dict[str, int]) -> None:
    """The workflow columns and states on upgraded rows: an old task gains a dependent and a child, a pause
    of it reaches the child and resume undoes it, and its success releases the dependent; the blocked and
    paused tasks of a database that had them move on."""
    state = lambda task_id: one(db, "select state from anchor.tasks where id = %s", task_id)  # noqa: E731
    defaults = db.execute(
        "select parent_id, unmet_dependencies, has_dependents, pause_requested, start_delay from anchor.tasks"
        " where id = %s",
        (ids["succeeded"],),
    ).fetchone()
    assert defaults == {
        "parent_id": None,
        "unmet_dependencies": 0,
        "has_dependents": False,
        "pause_requested": False,
        "start_delay": None,
    }

    old = ids["retrying"]
    dependent = enqueue(db, "Plain", 13, depends_on=[old])
    child = enqueue(db, "Plain", 14, parent_id=old)
    assert (state(dependent), state(child)) == ("blocked", "pending")
    paused = db.execute("select * from anchor.pause_task(%s)", (old,)).fetchall()
    assert {r["task_id"]: r["outcome"] for r in paused} == {old: "paused", child: "paused"}
    resumed = db.execute("select * from anchor.resume_task(%s)", (old,)).fetchall()
    assert {r["task_id"]: r["outcome"] for r in resumed} == {old: "pending", child: "pending"}

    assert one(db, "select anchor.retry_now(%s)", old) == "pending"
    claimed = db.execute(
        "select * from anchor.claim('new-worker', 10, task_names => array['Job']) where kind = 'execute'"
    )
    for row in claimed.fetchall():
        assert one(db, "select outcome from anchor.complete(array[%s]::bigint[], array[%s]::int[], 'new-worker')",
                   row["id"], row["attempt"]) == "succeeded"  # fmt: skip
    assert state(old) == "succeeded"
    assert state(dependent) == "pending"

    if "blocked" in ids:
        # its dependency, the old pending task, succeeded above
        assert state(ids["blocked"]) == "pending"
        resumed = db.execute("select * from anchor.resume_task(%s)", (ids["paused"],)).fetchall()
        assert [(r["task_id"], r["outcome"]) for r in resumed] == [(ids["paused"], "pending")]


def test_a_database_of_unreleased_migrations_is_refused_by_name(dsn: str, db: Conn) -> None:
    """A database installed from the migrations 0.1.0 replaced has no upgrade path: the installer says so."""
    db.execute("delete from anchor.schema_migrations where version > 5")
    db.execute(
        "update anchor.schema_migrations set checksum = 'old',"
        " name = (array['core', 'cron', 'retention', 'roles', 'heartbeat_v2'])[version]"
    )
    with pytest.raises(MigrationError) as err:
        install(dsn)
    assert str(err.value) == (
        "the database's schema anchor was installed from migrations that no release ships (0001_core, 0002_cron, "
        "0003_retention, 0004_roles, 0005_heartbeat_v2); it cannot be upgraded: drop schema anchor cascade and "
        "run anchor install-sql again"
    )


def test_a_changed_migration_is_refused(dsn: str, db: Conn) -> None:
    db.execute("update anchor.schema_migrations set checksum = 'edited' where version = 3")
    with pytest.raises(MigrationError, match="0003_registration_and_enqueue was changed after it was applied"):
        install(dsn)
