"""Bounds: no value an application (anchor_enqueuer) can pass to enqueue makes a row that a worker cannot
decode, that makes anchor.claim, anchor.fail or anchor.rescue raise, or that retries in a hot loop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.sql.factories import Conn, claim, claim_rows, db_now, definition, enqueue, fail, register, task
from tests.sql.hostile import as_role, one, sqlstate_of

EMAIL = {"userId": 2, "templateId": "b"}


@pytest.fixture
def app(db: Conn, dsn: str) -> Iterator[Conn]:
    db.execute("select anchor.ensure_roles()")
    register(
        db,
        definition("SendEmail", parameters={
            "type": "object",
            "properties": {"userId": {"type": "integer"}, "templateId": {"type": "string"},
                           "n": {"type": "integer"}, "x": {"type": "number"}, "any": {}},
        }),
        definition("Once"),
        definition("Forever", max_attempts=-1),
    )
    with as_role(dsn, "anchor_enqueuer") as conn:
        yield conn


def enqueue_as(conn: Conn, name: str, params: object, **overrides: object) -> int:
    args = "".join(f", {key} => %({key})s" for key in overrides)
    return int(one(conn, f"select anchor.enqueue(%(name)s, %(params)s::jsonb{args})",
                   {"name": name, "params": json.dumps(params), **overrides}))


@pytest.mark.parametrize("override", [
    {"run_at": "infinity"}, {"run_at": "-infinity"}, {"run_at": "2500-01-01"}, {"run_at": "1500-01-01"},
    {"scheduled_at": "infinity"}, {"scheduled_at": "3000-01-01"},
    {"timeout": "10000 years"}, {"timeout": "300000 years"}, {"delay": "10000 years"},
    {"retry_intervals": "{300000 years}"}, {"retry_intervals": "{1s,100001 hours}"},
    {"retry_intervals": "{{1s,2s},{3s,4s}}"},
])
def test_an_out_of_range_time_or_duration_is_refused_naming_it(app: Conn, override: dict[str, str]) -> None:
    ((key, value),) = override.items()
    state, message = sqlstate_of(lambda: enqueue_as(app, "SendEmail", EMAIL, **override))
    assert state == "AT003", message
    assert key in message and "SendEmail" in message


def test_the_widest_accepted_values_still_make_a_claimable_decodable_task(db: Conn, app: Conn) -> None:
    task_id = enqueue_as(app, "SendEmail", EMAIL, timeout="100000 hours", retry_intervals="{100000 hours}",
                         priority=-1, scheduled_at="2100-01-01", max_attempts=2)
    (row,) = claim(db)
    assert row["id"] == task_id and row["deadline"] > db_now(db) + timedelta(days=4000)
    assert fail(db, task_id, 1) == "retry"
    assert task(db, task_id)["run_at"] > db_now(db) + timedelta(days=4000)


def test_an_enqueuer_cannot_move_the_clock(db: Conn, app: Conn) -> None:
    task_id = enqueue_as(app, "SendEmail", EMAIL, p_now="infinity")
    row = task(db, task_id)
    assert abs(row["created_at"] - db_now(db)) < timedelta(minutes=1)
    assert abs(row["run_at"] - db_now(db)) < timedelta(minutes=1)


@pytest.mark.parametrize("params", [
    '{"userId": ' + "9" * 5000 + "}",  # an int Python's json refuses to parse (over 4300 digits)
    '{"n": 1e400}',  # PostgreSQL writes it as a 401-digit integer
    '{"any": {"deep": [1e400]}}',  # anywhere in the document, not only where the schema types it
    '{"x": -1' + "0" * 309 + "}",
])
def test_numbers_no_double_or_python_int_can_hold_are_refused(app: Conn, params: str) -> None:
    state, message = sqlstate_of(lambda: one(app, "select anchor.enqueue('SendEmail', %s::jsonb)", (params,)))
    assert state == "AT002", message
    assert "SendEmail" in message and "out of range" in message


def test_the_largest_double_is_accepted(db: Conn, app: Conn) -> None:
    task_id = enqueue_as(app, "SendEmail", {"x": 1.7976931348623157e308, "n": -(2**63)})
    assert float(task(db, task_id)["params"]["x"]) == 1.7976931348623157e308  # jsonb writes it as digits


def test_params_nested_too_deep_for_a_python_worker_are_refused(app: Conn) -> None:
    deep: object = 1
    for _ in range(101):
        deep = [deep]
    state, message = sqlstate_of(lambda: enqueue_as(app, "SendEmail", {"any": deep}))
    assert state == "AT002" and "nested deeper than 100" in message, message
    ok: object = 1
    for _ in range(99):
        ok = [ok]
    assert enqueue_as(app, "SendEmail", {"any": ok}) > 0


def test_a_row_written_before_the_bounds_cannot_stop_claim(db: Conn) -> None:
    register(db, definition("Job"))
    bad = enqueue(db, "Job", priority=-1)
    later_row = enqueue(db, "Job", delay="1 hour")
    good = enqueue(db, "Job")
    # rows an older release accepted: a timeout past the timestamp range, a run_at a worker cannot decode
    db.execute("update anchor.tasks set timeout = '300000 years' where id = %s", (bad,))
    db.execute("update anchor.tasks set run_at = 'infinity' where id = %s", (later_row,))
    rows = claim_rows(db)
    assert {r["id"] for r in rows if r["kind"] == "execute"} == {bad, good}
    (wake,) = [r for r in rows if r["kind"] == "wake"]
    assert wake["run_at"] is None or wake["run_at"].year < 2200


def test_one_row_that_cannot_be_rescued_does_not_stop_the_rescue_of_the_rest(db: Conn) -> None:
    register(db, definition("Job", max_attempts=3))
    first, broken, last = enqueue(db, "Job"), enqueue(db, "Job"), enqueue(db, "Job")
    now = db_now(db)
    claim(db, now=now)
    # a legacy retry interval past the timestamp range, and a row whose rescue update itself fails
    db.execute("update anchor.tasks set retry_intervals = '{300000 years}' where id = %s", (first,))
    db.execute(f"""
        create function public.refuse_update() returns trigger language plpgsql as $$
        begin
            if new.id = {broken} and new.state <> 'failed' then raise exception 'cannot update row {broken}'; end if;
            return new;
        end $$""")
    db.execute("create trigger refuse before update on anchor.tasks for each row"
               " execute function public.refuse_update()")
    rows = db.execute(
        "select * from anchor.rescue(heartbeat_timeout => '30 seconds', p_now => %s) order by id",
        (now + timedelta(minutes=5),),
    ).fetchall()
    assert [(r["id"], r["outcome"]) for r in rows] == [(first, "pending"), (broken, "failed"), (last, "pending")]
    assert "cannot update row" in task(db, broken)["last_error"]
    assert task(db, first)["run_at"] < now + timedelta(hours=100001)


@pytest.mark.parametrize("name, override", [
    ("Once", {"max_attempts": -1}),
    ("Once", {"max_attempts": -1, "retry_intervals": "{1 microsecond}"}),
    ("Forever", {}),
])
def test_no_policy_retries_sooner_than_one_second(db: Conn, app: Conn, name: str, override: dict[str, object]) -> None:
    task_id = enqueue_as(app, name, {}, **override)
    now = db_now(db)
    claim(db, now=now)
    assert fail(db, task_id, 1, now=now) == "retry"
    assert task(db, task_id)["run_at"] >= now + timedelta(seconds=1)
    assert claim(db, now=now + timedelta(milliseconds=999)) == []
