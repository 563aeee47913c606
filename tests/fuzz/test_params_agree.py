"""The SQL validator and the generated pydantic models agree on which params a task accepts.

Invariant: for a generated JSON Schema (the supported keywords only) the generator either refuses it
cleanly or produces a parameter model; then for generated JSON values (mostly fitting, some missing in
interesting ways: wrong types, 1.0 for an integer, bounds +-1, bad calendar dates, date-times without an
offset, missing required fields, nulls, unknown keys), ``anchor.params_violation`` on the registered schema
returns null exactly when ``Model.model_validate`` accepts the value as stored (the JSON read back from
jsonb, which is what a worker parses).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pydantic
import pytest
import yaml
from anchor_py_codegen import TaskFileError, generate
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.fuzz.strategies import json_schemas, load_generated, to_json_value, unload, values_for

TOP_LEVEL = json_schemas().filter(lambda s: s.get("type") == "object") | st.builds(
    lambda props: {"type": "object", "properties": props, "required": sorted(props)[:1]},
    st.dictionaries(st.from_regex(r"[a-z][a-zA-Z]{0,5}", fullmatch=True), json_schemas(1), min_size=1, max_size=4),
)
VALUES_PER_SCHEMA = 10


def _disagreements(conn: psycopg.Connection[Any], schema: dict[str, Any], data: st.DataObject) -> list[str]:
    text = yaml.safe_dump({"tasks": [{"name": "FuzzParams", "parameters": schema}]}, allow_unicode=True)
    try:
        module = generate(text, "fuzz.yaml")
    except TaskFileError:
        assume(False)  # refused cleanly (the generator fuzz checks how); nothing to compare
        raise AssertionError("unreachable") from None
    generated = load_generated(module.source)
    try:
        spec = generated.TASKS.by_name("FuzzParams")
        registered = spec.definition.get("parameters", {"type": "object"})
        values = [data.draw(values_for(schema), label=f"value {i}") for i in range(VALUES_PER_SCHEMA)]
        texts = [t for t in (to_json_value(v) for v in values) if t is not None]
        rows = conn.execute(
            "select v::text, anchor.params_violation(%s::jsonb, v) from unnest(%s::jsonb[]) as v",
            (json.dumps(registered), texts),
        ).fetchall()
        problems = []
        for stored, violation in rows:
            value = json.loads(stored)
            try:
                spec.params_model.model_validate(value)
                python_error = None
            except pydantic.ValidationError as error:
                python_error = str(error).splitlines()[0:3]
            if (violation is None) != (python_error is None):
                problems.append(f"schema {json.dumps(registered)} value {stored}: SQL says {violation!r}, "
                                f"pydantic says {python_error or 'valid'}")
        return problems
    finally:
        unload(generated)


def _run(dsn: str, examples: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(TOP_LEVEL, st.data())
        def check(schema: dict[str, Any], data: st.DataObject) -> None:
            problems = _disagreements(conn, schema, data)
            assert not problems, "\n".join(problems)

        check()


@pytest.mark.parametrize(("field", "value"), [
    ({"type": "integer", "enum": [0, 1], "minimum": 1}, 0),
    ({"type": "string", "enum": ["", "ab"], "minLength": 1}, ""),
])
def test_enum_with_bounds_agrees(dsn: str, field: dict[str, Any], value: Any) -> None:
    """Invariant: an enum value that breaks the schema's minimum / minLength is judged alike."""
    schema = {"type": "object", "properties": {"b": field}}

    class Fixed:
        def draw(self, _strategy: Any, label: str = "") -> Any:
            return {"b": value}

    with psycopg.connect(dsn, autocommit=True) as conn:
        problems = _disagreements(conn, schema, Fixed())  # type: ignore[arg-type]
    assert not problems, problems


def test_long_fraction_date_time_agrees(dsn: str) -> None:
    """Invariant: '2000-01-01T00:00:00.1234567Z' (RFC 3339 allows any number of fraction digits) is judged
    alike by anchor.params_violation and the generated model."""
    schema = {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}}

    class Fixed:
        def draw(self, _strategy: Any, label: str = "") -> Any:
            return {"at": "2000-01-01T00:00:00.1234567Z"}

    with psycopg.connect(dsn, autocommit=True) as conn:
        problems = _disagreements(conn, schema, Fixed())  # type: ignore[arg-type]
    assert not problems, problems


def test_params_sql_and_pydantic_agree(dsn: str) -> None:
    """Invariant (short): 40 generated schemas x 10 values: SQL and pydantic agree on accept/reject."""
    _run(dsn, 40)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_params_sql_and_pydantic_agree_long(dsn: str) -> None:
    """Invariant (long): 300 generated schemas x 10 values: SQL and pydantic agree on accept/reject."""
    _run(dsn, 300)
