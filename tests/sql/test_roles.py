"""Least privilege: each role logs in and can do exactly its part; hostile names never reach SQL unquoted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.sql.factories import Conn, claim, definition, enqueue, register, task

LOGINS = {
    "anchor_enqueuer": "anchor_test_app",
    "anchor_worker": "anchor_test_worker",
    "anchor_admin": "anchor_test_ops",
}


@pytest.fixture
def logins(db: Conn, dsn: str) -> Iterator[dict[str, str]]:
    """A DSN per anchor role, for a login role that is a member of it (roles are cluster-wide: idempotent)."""
    db.execute("select anchor.ensure_roles()")
    dsns = {}
    for role, login in LOGINS.items():
        db.execute(
            f"do $$ begin if not exists (select 1 from pg_roles where rolname = '{login}') then "
            f"create role {login} login; end if; end $$"
        )
        db.execute(f"grant {role} to {login}")
        dsns[role] = make_conninfo(**{**conninfo_to_dict(dsn), "user": login})
    register(db, definition("Job", on_failed=True))
    yield dsns


def run_as(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def refused(dsn: str, sql: str) -> bool:
    try:
        run_as(dsn, sql)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def test_the_enqueuer_can_only_enqueue(db: Conn, logins: dict[str, str]) -> None:
    app = logins["anchor_enqueuer"]
    ((task_id,),) = run_as(app, "select anchor.enqueue('Job', '{\"n\": 1}')")
    ((ids,),) = run_as(app, "select anchor.enqueue_many('Job', '[{}, {}]')")
    assert task(db, task_id)["state"] == "pending" and len(ids) == 2
    assert refused(app, "select * from anchor.tasks")
    assert refused(app, "select * from anchor.task_events")
    assert refused(app, "select * from anchor.claim('w', 10)")
    assert refused(app, f"select anchor.cancel({task_id})")
    assert refused(app, "update anchor.tasks set state = 'succeeded'")
    assert refused(app, "select anchor.register_tasks('[]', 99)")
    assert refused(app, "select anchor.prune()")
    assert refused(app, "update anchor.settings set value = '99999999'")


def test_the_worker_runs_tasks_but_cannot_read_tables_or_act_as_operator(db: Conn, logins: dict[str, str]) -> None:
    worker = logins["anchor_worker"]
    task_id = enqueue(db, "Job")
    run_as(worker, "select anchor.heartbeat_v2('w1', '{}')")
    rows = run_as(worker, "select id, attempt from anchor.claim('w1', 10) where kind = 'execute'")
    assert rows == [(task_id, 1)]
    assert run_as(worker, f"select anchor.fail({task_id}, 1, 'w1', 'boom')") == [("failing",)]
    assert run_as(worker, f"select anchor.finish_failure({task_id}, 1, 'w1')") == [("failed",)]
    assert run_as(worker, "select anchor.prune()") == [(0,)]
    assert run_as(worker, "select anchor.enqueue('Job', '{}')")[0][0] > task_id
    assert refused(worker, "select * from anchor.tasks")
    assert refused(worker, f"select anchor.retry_now({task_id})")
    assert refused(worker, "delete from anchor.tasks")


def test_the_admin_reads_tables_and_acts_on_tasks(db: Conn, logins: dict[str, str]) -> None:
    admin = logins["anchor_admin"]
    task_id = enqueue(db, "Job")
    assert run_as(admin, "select id, state from anchor.tasks") == [(task_id, "pending")]
    assert run_as(admin, f"select anchor.cancel({task_id})") == [("cancelled",)]
    assert run_as(admin, f"select anchor.retry_now({task_id})") == [("pending",)]


def test_api_functions_run_as_definer_with_a_fixed_search_path(db: Conn) -> None:
    rows = db.execute(
        """
        select p.proname, p.prosecdef, p.proconfig from pg_proc p
        join anchor.function_roles r on r.function_name = p.proname
        where p.pronamespace = 'anchor'::regnamespace
        """
    ).fetchall()
    assert {r["proname"] for r in rows} >= {"enqueue", "claim", "complete", "fail", "rescue", "cancel"}
    assert all(r["prosecdef"] and "search_path=pg_catalog, pg_temp" in r["proconfig"] for r in rows)
    public = db.execute(
        """
        select count(*) as n from pg_proc p
        where p.pronamespace = 'anchor'::regnamespace and has_function_privilege('public', p.oid, 'execute')
        """
    ).fetchone()
    assert public == {"n": 0}


HOSTILE = "x'); drop table anchor.tasks; --"


def test_hostile_task_and_queue_names_are_data_not_sql(db: Conn) -> None:
    register(db, definition(HOSTILE, queue=HOSTILE + ' "q"'))
    task_id = enqueue(db, HOSTILE, {"n": 1}, unique_tag=HOSTILE)
    assert task(db, task_id)["name"] == HOSTILE
    (row,) = claim(db, task_names=[HOSTILE])
    assert row["queue"] == HOSTILE + ' "q"'
    with pytest.raises(psycopg.Error, match="unknown task 'x''\\); drop table"):
        enqueue(db, HOSTILE + "!")
    assert db.execute("select count(*) as n from anchor.tasks").fetchone() == {"n": 1}
    assert json.loads(json.dumps(row["params"])) == {"n": 1}


def test_each_role_may_execute_exactly_its_functions_and_no_table(db: Conn, logins: dict[str, str]) -> None:
    rows = db.execute(
        """
        select p.proname,
            has_function_privilege('anchor_enqueuer', p.oid, 'execute') as enqueuer,
            has_function_privilege('anchor_worker', p.oid, 'execute') as worker,
            has_function_privilege('anchor_admin', p.oid, 'execute') as admin
        from pg_proc p where p.pronamespace = 'anchor'::regnamespace
        """
    ).fetchall()
    granted = {r["function_name"]: r["role_name"] for r in db.execute("select * from anchor.function_roles")}
    worker_level = {"anchor_enqueuer", "anchor_worker"}
    for row in rows:
        least = granted.get(row["proname"])
        assert row["enqueuer"] == (least == "anchor_enqueuer"), row
        assert row["worker"] == (least in worker_level), row
        assert row["admin"], row
    tables = db.execute(
        "select c.relname, has_table_privilege('anchor_enqueuer', c.oid, 'select, insert, update, delete') as e,"
        " has_table_privilege('anchor_worker', c.oid, 'select, insert, update, delete') as w"
        " from pg_class c where c.relnamespace = 'anchor'::regnamespace and c.relkind = 'r'"
    ).fetchall()
    assert {t["relname"] for t in tables} >= {"tasks", "task_events", "task_definitions", "workers", "settings"}
    assert [t for t in tables if t["e"] or t["w"]] == []
    assert refused(logins["anchor_enqueuer"], "insert into anchor.tasks (name) values ('x')")
