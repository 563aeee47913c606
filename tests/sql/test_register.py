"""Registering task definitions: versioned, idempotent, validated, and nothing half-applied on error."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.sql.factories import Conn, definition, register


def stored(db: Conn) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in db.execute("select * from anchor.task_definitions").fetchall()}


def test_registration_applies_then_is_unchanged_and_ignores_older_versions(db: Conn) -> None:
    v2 = [definition("A", retry_interval="1m,2m", timeout="10m", queue="q", priority=2, on_failed=True)]
    assert register(db, *v2, version=2) == "applied"
    assert register(db, *v2, version=2) == "unchanged"
    assert register(db, definition("A", timeout="99m"), version=1) == "ignored_older"
    a = stored(db)["A"]
    assert a["retry_intervals"] == [timedelta(minutes=1), timedelta(minutes=2)]
    assert (a["timeout"], a["queue"], a["priority"], a["on_failed"], a["max_attempts"]) == (
        timedelta(minutes=10),
        "q",
        2,
        True,
        -1,
    )


def test_defaults_one_attempt_without_a_retry_policy_and_one_hour_timeout(db: Conn) -> None:
    register(db, {"name": "Bare"})
    bare = stored(db)["Bare"]
    assert (bare["max_attempts"], bare["timeout"], bare["retry_intervals"], bare["queue"]) == (
        1,
        timedelta(hours=1),
        [],
        "default",
    )
    assert bare["params_schema"] == {"type": "object"}


def test_a_newer_registration_deactivates_left_out_tasks(db: Conn) -> None:
    register(db, definition("A"), definition("B"), version=1)
    register(db, definition("A"), version=2)
    assert {n: d["active"] for n, d in stored(db).items()} == {"A": True, "B": False}
    register(db, definition("A"), definition("B"), version=3)
    assert stored(db)["B"]["active"] is True


@pytest.mark.parametrize(
    ("definitions", "message"),
    [
        ({"name": "A"}, "definitions must be a JSON array"),
        ([{"description": "x"}], 'definitions[0] must be an object with a non-empty "name"'),
        ([{"name": "A"}, {"name": "A"}], "task 'A' is defined more than once"),
        ([{"name": "A", "retries": 3}], "definitions[0] (A).retries: unknown key"),
        ([{"name": "A", "retry_interval": "5x"}], 'definitions[0] (A).retry_interval: "5x" is not a duration'),
        ([{"name": "A", "retry_interval": "1m,,2m"}], "(A).retry_interval"),
        ([{"name": "A", "timeout": "0s"}], 'definitions[0] (A).timeout: "0s" is not a duration'),
        ([{"name": "A", "max_attempts": 0}], "(A).max_attempts: 0 must be -1 (unlimited) or a whole number >= 1"),
        ([{"name": "A", "max_attempts": "3"}], '(A).max_attempts: "3" must be'),
        ([{"name": "A", "priority": 1.5}], "(A).priority: 1.5 must be a whole number"),
        ([{"name": "A", "queue": ""}], '(A).queue: "" must be a non-empty string'),
        ([{"name": "A", "on_failed": "yes"}], '(A).on_failed: "yes" must be true or false'),
        ([{"name": "A", "cron": "* * * * *"}], '(A).cron: "* * * * *" must be an object or null'),
        (
            [{"name": "A", "parameters": {"type": "object", "oneOf": []}}],
            "(A).parameters: unsupported JSON Schema keyword 'oneOf'",
        ),
        (
            [{"name": "A", "parameters": {"type": "object", "properties": {"x": {"type": "null"}}}}],
            "(A).parameters.properties.x.type: unsupported type 'null'",
        ),
        (
            [
                {
                    "name": "A",
                    "parameters": {"type": "object", "properties": {"x": {"type": "string", "format": "email"}}},
                }
            ],
            "(A).parameters.properties.x.format: unsupported format 'email'",
        ),
    ],
)
def test_bad_definitions_are_refused_by_path_and_nothing_is_applied(db: Conn, definitions: Any, message: str) -> None:
    register(db, definition("Existing"), version=1)
    with pytest.raises(psycopg.Error) as err:
        db.execute("select anchor.register_tasks(%s::jsonb, 2)", (json.dumps(definitions),))
    assert err.value.sqlstate == "AT003"
    assert message in str(err.value)
    assert list(stored(db)) == ["Existing"]
    assert db.execute("select version from anchor.task_registry").fetchone() == {"version": 1}
