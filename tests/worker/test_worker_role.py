"""A real Worker logged in as a member of anchor_worker (no table access to anchor.*) runs tasks, fails
them, runs their hooks, rescues, prunes and fires cron: the worker needs only the functions it calls."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.worker.app import Executor
from tests.worker.conftest import FAST, enqueue, running_worker, task, wait_for

Db = psycopg.Connection[dict[str, Any]]
LOGIN = "anchor_test_worker_login"


def worker_login(db: Db, dsn: str) -> str:
    db.execute("select anchor.ensure_roles()")
    db.execute(
        f"do $$ begin if not exists (select 1 from pg_roles where rolname = '{LOGIN}') then "
        f"create role {LOGIN} login; end if; end $$"
    )
    db.execute(f"grant anchor_worker to {LOGIN}")
    # the application's own tables, which its hooks write in the failure's transaction
    db.execute(f"grant select, insert on test_runs, hook_log, test_flags to {LOGIN}")
    return make_conninfo(**{**conninfo_to_dict(dsn), "user": LOGIN})


def test_a_worker_with_only_the_anchor_worker_role_runs_tasks_and_hooks(dsn: str, app_db: Db) -> None:
    worker_dsn = worker_login(app_db, dsn)
    with psycopg.connect(worker_dsn) as conn, conn.cursor() as cursor:
        try:
            cursor.execute("select count(*) from anchor.tasks")
            raise AssertionError("anchor_worker must not read anchor.tasks")
        except psycopg.errors.InsufficientPrivilege:
            pass
    ok = enqueue(app_db, "Work", {"userId": 1})
    failing = enqueue(app_db, "Flaky", {"userId": 2, "mode": "fatal"})

    async def scenario() -> None:
        config = dataclasses.replace(FAST, worker_id="role-worker")
        async with running_worker(worker_dsn, config, Executor(dsn)):
            await wait_for(lambda: task(app_db, ok)["state"] == "succeeded", 15)
            await wait_for(lambda: task(app_db, failing)["state"] == "failed", 15)

    asyncio.run(scenario())
    hooks = app_db.execute("select task_id from hook_log").fetchall()
    assert hooks == [{"task_id": failing}]


def test_install_sql_with_roles_twice_changes_nothing_the_second_time(dsn: str) -> None:
    anchor = [str(Path(sys.executable).parent / "anchor"), "install-sql", "--roles", "--dsn", dsn]
    first = subprocess.run(anchor, capture_output=True, text=True, timeout=120)
    second = subprocess.run(anchor, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "up to date" in second.stdout
    assert "roles anchor_enqueuer, anchor_worker, anchor_admin are in place" in second.stdout
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select rolname from pg_roles where rolname like 'anchor\\_%' and rolname not like 'anchor\\_test%' "
            "order by rolname"
        ).fetchall()
    assert [r[0] for r in rows] == ["anchor_admin", "anchor_enqueuer", "anchor_worker"]
