"""Enqueueing through the SQL core: defaults from definitions, overrides, schema validation inside
PostgreSQL (every supported keyword), unique tags under races, and nothing written on error."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.sql.factories import Conn, claim, complete, db_now, definition, enqueue, register, task

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["userId", "email"],
    "additionalProperties": False,
    "properties": {
        "userId": {"type": "integer", "format": "int32", "minimum": 1},
        "big": {"type": "integer", "format": "int64"},
        "email": {"type": "string", "minLength": 3, "maxLength": 20},
        "amount": {"type": "number", "format": "double", "maximum": 100.5},
        "ratio": {"type": "number", "format": "float"},
        "active": {"type": "boolean"},
        "priority": {"type": "string", "enum": ["low", "medium", "high"]},
        "day": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
        },
        "items": {
            "type": "array",
            "items": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "integer"}}},
        },
        "metadata": {"type": "object"},
    },
}
VALID = {"userId": 7, "email": "a@b.c"}


@pytest.fixture
def shop(db: Conn) -> Conn:
    register(db, definition("Shop", parameters=SCHEMA))
    return db


def count_tasks(db: Conn) -> int:
    row = db.execute("select count(*) as n from anchor.tasks").fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize(
    "params",
    [
        VALID,
        {**VALID, "big": 9223372036854775807, "amount": 100.5, "ratio": 1, "active": False},
        {**VALID, "priority": "high", "day": "2024-02-29", "at": "2026-01-31T09:30:00Z"},
        {**VALID, "at": "2026-01-31T09:30:00.123456+08:00", "tags": [], "address": {"city": "Rome"}},
        {**VALID, "items": [{"sku": 1}, {"sku": 2}], "metadata": {"anything": [1, {"x": None}]}},
        {**VALID, "priority": None, "address": None},  # null for a property that is not required = absent
    ],
)
def test_valid_params_are_accepted(shop: Conn, params: dict[str, Any]) -> None:
    task_id = enqueue(shop, "Shop", params)
    assert task(shop, task_id)["params"] == params


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"email": "a@b.c"}, "$.userId: is required"),
        ({**VALID, "userId": None}, "$.userId: is required"),
        ({**VALID, "userId": "7"}, "$.userId: expected an integer, got string"),
        ({**VALID, "userId": 7.0}, "$.userId: expected an integer, got 7.0"),
        ({**VALID, "userId": 2147483648}, "$.userId: 2147483648 is out of range for int32"),
        ({**VALID, "big": 9223372036854775808}, "$.big: 9223372036854775808 is out of range for int64"),
        ({**VALID, "userId": 0}, "$.userId: 0 is below the minimum 1"),
        ({**VALID, "amount": 100.6}, "$.amount: 100.6 is above the maximum 100.5"),
        ({**VALID, "amount": "1"}, "$.amount: expected a number, got string"),
        ({**VALID, "email": "ab"}, "$.email: shorter than minLength 3"),
        ({**VALID, "email": "x" * 21}, "$.email: longer than maxLength 20"),
        ({**VALID, "email": 5}, "$.email: expected a string, got number"),
        ({**VALID, "active": 1}, "$.active: expected a boolean, got number"),
        ({**VALID, "priority": "urgent"}, '$.priority: "urgent" is not one of ["low", "medium", "high"]'),
        ({**VALID, "day": "2023-02-29"}, '$.day: "2023-02-29" is not a date (YYYY-MM-DD)'),
        ({**VALID, "day": "2023-2-1"}, '$.day: "2023-2-1" is not a date'),
        ({**VALID, "at": "2026-01-31T09:30:00"}, '$.at: "2026-01-31T09:30:00" is not a date-time with an offset'),
        ({**VALID, "at": "2026-01-31T25:30:00Z"}, '$.at: "2026-01-31T25:30:00Z" is not a date-time'),
        ({**VALID, "tags": "a"}, "$.tags: expected an array, got string"),
        ({**VALID, "tags": ["a", 2]}, "$.tags[1]: expected a string, got number"),
        ({**VALID, "address": {}}, "$.address.city: is required"),
        ({**VALID, "address": {"city": 1}}, "$.address.city: expected a string, got number"),
        ({**VALID, "items": [{"sku": 1}, {"sku": "x"}]}, "$.items[1].sku: expected an integer, got string"),
        ({**VALID, "metadata": []}, "$.metadata: expected an object, got array"),
        ({**VALID, "extra": 1}, "$.extra: unknown property (additionalProperties is false)"),
    ],
)
def test_invalid_params_name_the_task_and_json_path_and_write_nothing(
    shop: Conn, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(psycopg.Error) as err:
        enqueue(shop, "Shop", params)
    assert err.value.sqlstate == "AT002"
    assert str(err.value).startswith("task Shop: params ")
    assert message in str(err.value)
    assert count_tasks(shop) == 0


def test_params_must_be_an_object(shop: Conn) -> None:
    with pytest.raises(psycopg.Error, match="task Shop: params must be a JSON object, got array"):
        shop.execute("select anchor.enqueue('Shop', '[1]')")


def test_unknown_and_inactive_task_names_are_refused(db: Conn) -> None:
    register(db, definition("Old"), version=1)
    register(db, definition("New"), version=2)
    for name in ("Nope", "Old"):
        with pytest.raises(psycopg.Error, match=f"unknown task '{name}'") as err:
            enqueue(db, name)
        assert err.value.sqlstate == "AT001"
    assert count_tasks(db) == 0


def test_defaults_come_from_the_definition_and_overrides_win(db: Conn) -> None:
    register(
        db,
        definition("Job", retry_interval="1m,2m", max_attempts=4, timeout="10m", queue="mail", priority=3),
    )
    defaults = task(db, enqueue(db, "Job"))
    assert (defaults["queue"], defaults["priority"], defaults["max_attempts"]) == ("mail", 3, 4)
    assert defaults["retry_intervals"] == [timedelta(minutes=1), timedelta(minutes=2)]
    assert defaults["timeout"] == timedelta(minutes=10)

    now = db_now(db)
    overridden = task(
        db,
        enqueue(
            db,
            "Job",
            retry_intervals=[timedelta(seconds=5)],
            max_attempts=-1,
            timeout=timedelta(seconds=30),
            priority=-1,
            queue="urgent",
            delay=timedelta(minutes=10),
            p_now=now,
        ),
    )
    assert (overridden["queue"], overridden["priority"], overridden["max_attempts"]) == ("urgent", -1, -1)
    assert overridden["retry_intervals"] == [timedelta(seconds=5)]
    assert overridden["timeout"] == timedelta(seconds=30)
    assert overridden["run_at"] == now + timedelta(minutes=10)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_attempts": 0}, "task Job: max_attempts must be -1 (unlimited) or at least 1, got 0"),
        ({"timeout": timedelta(0)}, "task Job: timeout must be above zero"),
        ({"retry_intervals": []}, "task Job: retry_intervals must not be empty"),
        ({"retry_intervals": [timedelta(seconds=-1)]}, "task Job: retry_intervals must all be above zero"),
        ({"delay": timedelta(seconds=-5)}, "task Job: delay must not be negative"),
        ({"delay": timedelta(seconds=5), "run_at": "2030-01-01T00:00:00Z"}, "task Job: give run_at or delay, not both"),
        ({"unique_tag": ""}, "task Job: unique_tag must not be empty"),
        ({"queue": " "}, "task Job: queue must not be empty"),
    ],
)
def test_bad_overrides_are_refused_by_name(db: Conn, overrides: dict[str, Any], message: str) -> None:
    register(db, definition("Job"))
    with pytest.raises(psycopg.Error, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        enqueue(db, "Job", **overrides)
    assert err.value.sqlstate == "AT003"
    assert count_tasks(db) == 0


def test_enqueue_many_keeps_input_order_and_validates_every_element(db: Conn) -> None:
    register(db, definition("Job"))
    row = db.execute(
        "select anchor.enqueue_many('Job', %s::jsonb) as ids", (json.dumps([{"n": i} for i in range(50)]),)
    ).fetchone()
    assert row is not None
    ids = row["ids"]
    assert [task(db, i)["params"]["n"] for i in ids] == list(range(50))
    with pytest.raises(psycopg.Error, match=r"task Job: params\[2\] \$.n: expected an integer, got string"):
        db.execute("select anchor.enqueue_many('Job', %s::jsonb)", (json.dumps([{"n": 1}, {"n": 2}, {"n": "3"}]),))
    assert count_tasks(db) == 50
    with pytest.raises(psycopg.Error, match="enqueue_many takes params as a JSON array of objects, got object"):
        db.execute("select anchor.enqueue_many('Job', '{}')")


def test_enqueue_many_with_unique_tags_deduplicates_each(db: Conn) -> None:
    register(db, definition("Job"))
    first = enqueue(db, "Job", {"n": 0}, unique_tag="a")
    row = db.execute(
        "select anchor.enqueue_many('Job', '[{\"n\": 1}, {\"n\": 2}]', unique_tags => array['a', 'b']) as ids"
    ).fetchone()
    assert row is not None and row["ids"][0] == first and row["ids"][1] != first
    with pytest.raises(psycopg.Error, match="2 unique_tags for 1 params"):
        db.execute("select anchor.enqueue_many('Job', '[{}]', unique_tags => array['x', 'y'])")


def test_a_duplicate_unique_tag_returns_the_live_task_and_a_finished_task_frees_it(db: Conn) -> None:
    register(db, definition("Job"))
    first = enqueue(db, "Job", {"n": 1}, unique_tag="user-1-daily")
    assert enqueue(db, "Job", {"n": 2}, unique_tag="user-1-daily") == first
    assert count_tasks(db) == 1
    (row,) = claim(db)
    assert enqueue(db, "Job", {"n": 3}, unique_tag="user-1-daily") == first  # running still holds it
    complete(db, first, row["attempt"])
    second = enqueue(db, "Job", {"n": 4}, unique_tag="user-1-daily")
    assert second != first
    assert task(db, second)["params"] == {"n": 4}


def test_eight_threads_enqueueing_one_tag_at_once_get_one_id_and_no_error(db: Conn) -> None:
    register(db, definition("Job"))
    start = threading.Barrier(8)
    ids: list[int] = []
    errors: list[BaseException] = []

    def enqueue_once() -> None:
        try:
            with psycopg.connect(db.info.dsn, autocommit=True) as conn:
                start.wait()
                row = conn.execute("select anchor.enqueue('Job', '{}', unique_tag => 'race')").fetchone()
                assert row is not None
                ids.append(row[0])
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    for _ in range(20):
        ids.clear()
        threads = [threading.Thread(target=enqueue_once) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(ids) == 8 and len(set(ids)) == 1
        db.execute("select anchor.cancel(%s)", (ids[0],))  # free the tag for the next round
    assert count_tasks(db) == 20


def test_a_rolled_back_enqueue_leaves_no_task(db: Conn) -> None:
    register(db, definition("Job"))
    with psycopg.connect(db.info.dsn) as conn:
        conn.execute("select anchor.enqueue('Job', '{}')")
        conn.rollback()
    assert count_tasks(db) == 0


def test_oversized_params_are_refused_with_the_limit_named(db: Conn) -> None:
    register(db, {"name": "Blob", "parameters": {"type": "object", "properties": {"data": {"type": "string"}}}})
    big = {"data": "x" * (1024 * 1024)}
    with pytest.raises(psycopg.Error, match=r"task Blob: params \$: \d+ bytes is over the limit of 1048576 bytes"):
        enqueue(db, "Blob", big)
    with pytest.raises(psycopg.Error, match=r"task Blob: params\[0\] \$: \d+ bytes is over the limit"):
        db.execute("select anchor.enqueue_many('Blob', %s::jsonb)", (json.dumps([big]),))
    db.execute("set anchor.max_params_bytes = 4000000")  # a session setting changes nothing
    with pytest.raises(psycopg.Error, match="over the limit"):
        enqueue(db, "Blob", big)
    db.execute("update anchor.settings set value = '2000000' where name = 'max_params_bytes'")
    assert enqueue(db, "Blob", big) > 0
    assert count_tasks(db) == 1
