"""Clear errors where the contract promises them: an oversized tag or batch, a malformed keyword in a
registered schema, a null id. Each gets an AT code naming the value; none leaves a row behind."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.sql.factories import Conn, definition, register
from tests.sql.hostile import as_role, one, sqlstate_of


@pytest.fixture
def app(db: Conn, dsn: str) -> Iterator[Conn]:
    db.execute("select anchor.ensure_roles()")
    register(db, definition("Job"))
    with as_role(dsn, "anchor_enqueuer") as conn:
        yield conn


@pytest.mark.parametrize("override", ["unique_tag => repeat('x', 3000)", "queue => repeat('q', 3000)"])
def test_an_oversized_tag_or_queue_is_refused_naming_it(db: Conn, app: Conn, override: str) -> None:
    state, message = sqlstate_of(lambda: one(app, f"select anchor.enqueue('Job', '{{}}', {override})"))
    assert state == "AT003" and override.split()[0] in message and "bytes" in message, message
    assert one(db, "select count(*) from anchor.tasks") == 0


@pytest.mark.parametrize("schema, problem", [
    ({"type": "object", "properties": {"s": {"type": "string", "maxLength": "abc"}}}, "maxLength"),
    ({"type": "object", "properties": {"s": {"type": "string", "minLength": -1}}}, "minLength"),
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": "x"}}}, "minimum"),
    ({"type": "object", "properties": {"n": {"type": "number", "maximum": [1]}}}, "maximum"),
    ({"type": "object", "required": [1, 2]}, "required"),
    ({"type": "object", "additionalProperties": "no"}, "additionalProperties"),
    ({"type": "object", "description": 5}, "description"),
])
def test_register_refuses_a_schema_keyword_of_the_wrong_type(db: Conn, schema: dict[str, object], problem: str) -> None:
    state, message = sqlstate_of(lambda: register(db, definition("Bad", parameters=schema)))
    assert state == "AT003" and problem in message and "Bad" in message, message
    assert one(db, "select count(*) from anchor.task_definitions where name = 'Bad'") == 0


def test_register_refuses_a_schema_nested_too_deep(db: Conn) -> None:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(70):
        schema = {"type": "array", "items": schema}
    state, message = sqlstate_of(lambda: register(db, definition("Deep", parameters=schema)))
    assert state == "AT003" and "nested deeper" in message, message


@pytest.mark.parametrize("field, value", [("name", "n" * 300), ("queue", "q" * 300)])
def test_register_refuses_an_oversized_name_or_queue(db: Conn, field: str, value: str) -> None:
    state, message = sqlstate_of(lambda: register(db, {"name": "Job", **{field: value}}))
    assert state == "AT003" and "bytes" in message, message


def test_enqueue_many_limits_the_whole_call_not_only_each_element(db: Conn, app: Conn) -> None:
    db.execute("update anchor.settings set value = '1000' where name = 'max_params_bytes'")
    db.execute("update anchor.settings set value = '20000' where name = 'max_enqueue_many_bytes'")
    batch = json.dumps([{"s": "x" * 900}] * 30)
    state, message = sqlstate_of(lambda: one(app, "select anchor.enqueue_many('Job', %s::jsonb)", (batch,)))
    assert state == "AT002" and "max_enqueue_many_bytes" in message and "Job" in message, message
    assert one(db, "select count(*) from anchor.tasks") == 0
    assert len(one(app, "select anchor.enqueue_many('Job', %s::jsonb)", (json.dumps([{"s": "x" * 900}] * 10),))) == 10


@pytest.mark.parametrize("call", ["cancel", "retry_now", "retry_hook"])
def test_a_null_task_id_is_a_clear_error(db: Conn, call: str) -> None:
    state, message = sqlstate_of(lambda: one(db, f"select anchor.{call}(null)"))
    assert state == "AT003" and "must not be null" in message, message
