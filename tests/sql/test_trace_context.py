"""anchor.trace_tasks and anchor.trace_contexts: the enqueuing span's trace context kept with the task."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.factories import claim, definition, enqueue, register

CONTEXT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def test_trace_tasks_wraps_enqueue_in_one_statement_and_the_worker_reads_it_back(db: psycopg.Connection[Any]) -> None:
    register(db, definition("Traced"))
    task_id = db.execute(
        "select (anchor.trace_tasks(array[anchor.enqueue('Traced', '{}')], %s))[1] as id", (Jsonb(CONTEXT),)
    ).fetchone()["id"]
    untraced = enqueue(db, "Traced")
    rows = db.execute("select * from anchor.trace_contexts(%s)", ([task_id, untraced],)).fetchall()
    assert rows == [{"task_id": task_id, "trace_context": CONTEXT}]


def test_a_task_keeps_its_first_context_and_a_started_task_gets_none(db: psycopg.Connection[Any]) -> None:
    register(db, definition("Traced"))
    first = enqueue(db, "Traced")
    db.execute("select anchor.trace_tasks(array[%s]::bigint[], %s)", (first, Jsonb(CONTEXT)))
    other = {"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}
    db.execute("select anchor.trace_tasks(array[%s]::bigint[], %s)", (first, Jsonb(other)))
    assert db.execute("select trace_context from anchor.tasks where id = %s", (first,)).fetchone() == {
        "trace_context": CONTEXT}
    second = enqueue(db, "Traced")
    assert {row["id"] for row in claim(db)} == {first, second}
    db.execute("select anchor.trace_tasks(array[%s]::bigint[], %s)", (second, Jsonb(CONTEXT)))
    assert db.execute("select trace_context from anchor.tasks where id = %s", (second,)).fetchone() == {
        "trace_context": None}


@pytest.mark.parametrize("bad", [["not", "an", "object"], {"traceparent": 1}, {"traceparent": "x" * 5000}])
def test_a_context_that_is_not_a_small_object_of_strings_is_refused(db: psycopg.Connection[Any], bad: Any) -> None:
    register(db, definition("Traced"))
    task_id = enqueue(db, "Traced")
    with pytest.raises(psycopg.Error, match=re.escape(f"tasks {{{task_id}}}: trace_context must be")) as raised:
        db.execute("select anchor.trace_tasks(array[%s]::bigint[], %s)", (task_id, Jsonb(bad)))
    assert raised.value.sqlstate == "AT003"


def test_the_enqueuer_role_may_record_a_context_and_only_the_worker_read_it(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        grants = dict(conn.execute(
            "select function_name, role_name from anchor.function_roles where function_name like 'trace_%'"
        ).fetchall())
    assert grants == {"trace_tasks": "anchor_enqueuer", "trace_contexts": "anchor_worker"}
