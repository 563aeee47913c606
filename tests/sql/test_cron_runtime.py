"""Runtime cron schedules (0016_runtime_schedules): cron_upsert / cron_delete, their checks, the name rule
that keeps them apart from the YAML schedules, registration leaving them alone, and who may call what.
Every call takes p_now; fire times are passed in as the cron loop would."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.sql.factories import Conn, definition, register
from tests.sql.test_cron_sql import T0, cron_def, fire, schedule, take_due, tasks
from tests.sql.test_roles import logins, refused, run_as  # noqa: F401 - the logins fixture

REPORT_SCHEMA = {
    "type": "object",
    "required": ["date", "userId"],
    "properties": {"date": {"type": "string", "format": "date"}, "userId": {"type": "integer"}},
}
SPACES = "must not start or end with spaces or hold control characters"
OVER = "is over the limit of 255 bytes"
BERLIN = "'Europe/Berlin'"


def upsert(
    db: Conn,
    name: str,
    task_name: str = "Job",
    expression: str = "0 0 9 * * 1",
    params: Any = None,
    timezone: str | None = None,
) -> str:
    row = db.execute(
        "select anchor.cron_upsert(name => %s, task_name => %s, cron_expression => %s, params => %s::jsonb,"
        " timezone => %s, p_now => %s) as outcome",
        (name, task_name, expression, json.dumps({"n": 1} if params is None else params), timezone, T0),
    ).fetchone()
    assert row is not None
    return str(row["outcome"])


def delete(db: Conn, name: str) -> str:
    row = db.execute("select anchor.cron_delete(%s) as outcome", (name,)).fetchone()
    assert row is not None
    return str(row["outcome"])


def error_of(db: Conn, sql: str, *args: Any) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        db.execute(sql, args)
    return info.value


def upsert_error(db: Conn, name: Any, task_name: Any = "Job", expression: Any = "* * * * *", params: Any = None,
                 timezone: Any = None) -> psycopg.Error:
    return error_of(
        db,
        "select anchor.cron_upsert(%s, %s, %s, %s::jsonb, %s)",
        name, task_name, expression, json.dumps({"n": 1} if params is None else params), timezone,
    )


@pytest.fixture(autouse=True)
def _definitions(db: Conn) -> None:
    register(db, definition("Job"), cron_def("Tick", "*/10 * * * * *"), definition("Report", parameters=REPORT_SCHEMA))


# --- create, replace, fire, delete ---------------------------------------------------------------------


def test_upsert_creates_a_runtime_schedule_beside_the_yaml_one(db: Conn) -> None:
    assert upsert(db, "digest:user-42", params={"n": 42}, timezone="Europe/Berlin") == "created"
    row = schedule(db, "digest:user-42")
    assert row is not None
    assert (row["source"], row["task_name"], row["expression"], row["timezone"], row["params"]) == (
        "runtime", "Job", "0 0 9 * * 1", "Europe/Berlin", {"n": 42}
    )
    assert (row["catch_up"], row["overlap"], row["paused"], row["next_fire_at"]) == (0, "skip", False, None)
    listed = db.execute("select name, source, task_name, task_active from anchor.cron_list_v2()").fetchall()
    assert listed == [
        {"name": "Tick", "source": "yaml", "task_name": "Tick", "task_active": True},
        {"name": "digest:user-42", "source": "runtime", "task_name": "Job", "task_active": True},
    ]
    assert upsert(db, "utc", expression="* * * * *") == "created"
    assert schedule(db, "utc")["timezone"] == "UTC"  # type: ignore[index]


def test_replacing_keeps_the_fire_time_unless_the_expression_or_zone_changes(db: Conn) -> None:
    upsert(db, "s")
    start_at = T0 + timedelta(days=1)
    fire(db, "s", None, [], start_at, T0)
    assert upsert(db, "s") == "unchanged"
    assert upsert(db, "s", params={"n": 2}) == "replaced"
    row = schedule(db, "s")
    assert row is not None and (row["params"], row["next_fire_at"]) == ({"n": 2}, start_at)
    assert upsert(db, "s", params={"n": 2}, timezone="Asia/Tokyo") == "replaced"
    assert schedule(db, "s")["next_fire_at"] is None  # type: ignore[index]
    fire(db, "s", None, [], start_at, T0)
    assert upsert(db, "s", expression="0 0 * * * *", params={"n": 2}, timezone="Asia/Tokyo") == "replaced"
    assert schedule(db, "s")["next_fire_at"] is None  # type: ignore[index]


def test_a_runtime_schedule_fires_its_task_once_per_fire_time(db: Conn) -> None:
    upsert(db, "every-second", expression="* * * * * *", params={"n": 7})
    due = [r for r in take_due(db, T0) if r["name"] == "every-second"]
    assert [(r["name"], r["params_schema"]["properties"]) for r in due] == [
        ("every-second", {"n": {"type": "integer"}})
    ]
    fire(db, "every-second", None, [], T0, T0 - timedelta(seconds=1))
    (fired,) = fire(db, "every-second", T0, [T0], T0 + timedelta(seconds=1), T0, params=[{"n": 7}])
    assert fired["outcome"] == "enqueued"
    (job,) = tasks(db, "Job")
    assert (job["id"], job["params"], job["scheduled_at"]) == (fired["task_id"], {"n": 7}, T0)
    assert tasks(db, "every-second") == []
    # the same fire time again (a second loop with a stale read): fenced, nothing enqueued
    assert [r["outcome"] for r in fire(db, "every-second", T0, [T0], T0 + timedelta(seconds=1), T0)] == ["stale"]
    assert len(tasks(db, "Job")) == 1


def test_delete_removes_a_runtime_schedule_and_its_fire_records(db: Conn) -> None:
    upsert(db, "s", expression="* * * * * *")
    fire(db, "s", None, [], T0, T0 - timedelta(seconds=1))
    fire(db, "s", T0, [T0], T0 + timedelta(seconds=1), T0)
    assert delete(db, "s") == "deleted"
    assert schedule(db, "s") is None
    assert db.execute("select count(*) as n from anchor.cron_fires where name = 's'").fetchone() == {"n": 0}
    assert len(tasks(db, "Job")) == 1  # the fired task is an ordinary task and stays
    assert delete(db, "s") == "absent"
    assert delete(db, "never-was") == "absent"


def test_a_yaml_schedule_cannot_be_deleted(db: Conn) -> None:
    error = error_of(db, "select anchor.cron_delete('Tick')")
    assert error.sqlstate == "AT003"
    assert error.diag.message_primary == (
        "cron_delete: schedule 'Tick' comes from the cronjob of task Tick and cannot be deleted"
    )
    assert schedule(db, "Tick") is not None


def test_pause_and_resume_work_on_runtime_schedules(db: Conn) -> None:
    upsert(db, "s")
    fire(db, "s", None, [], T0 + timedelta(days=1), T0)
    assert db.execute("select anchor.cron_pause('s', p_now => %s) as o", (T0,)).fetchone() == {"o": "paused"}
    assert [r["name"] for r in take_due(db, T0 + timedelta(days=2))] == ["Tick"]
    # an operator's pause survives a replacement
    upsert(db, "s", params={"n": 5})
    assert schedule(db, "s")["paused"] is True  # type: ignore[index]
    assert db.execute("select anchor.cron_resume('s', p_now => %s) as o", (T0,)).fetchone() == {"o": "resumed"}
    assert "s" in [r["name"] for r in take_due(db, T0)]


def test_replacing_a_schedule_the_cron_loop_paused_for_an_error_lifts_the_pause(db: Conn) -> None:
    # SQL cannot parse cron expressions: a bad one is accepted, and the cron loop pauses it with its error
    assert upsert(db, "s", expression="every monday") == "created"
    db.execute("select anchor.cron_fail('s', 'cron expression ''every monday'' is invalid', p_now => %s)", (T0,))
    assert upsert(db, "s", expression="every monday") == "unchanged"
    assert schedule(db, "s")["paused"] is True  # type: ignore[index]
    assert upsert(db, "s", expression="0 0 9 * * 1") == "replaced"
    row = schedule(db, "s")
    assert row is not None
    assert (row["paused"], row["paused_at"], row["last_error"], row["next_fire_at"]) == (False, None, None, None)


# --- checks --------------------------------------------------------------------------------------------


def test_params_are_checked_against_the_task_schema_as_an_enqueue_checks_them(db: Conn) -> None:
    error = upsert_error(db, "s", params={"n": "many"})
    enqueue_error = error_of(db, "select anchor.enqueue('Job', '{\"n\": \"many\"}')")
    assert (error.sqlstate, error.diag.message_primary) == (enqueue_error.sqlstate, enqueue_error.diag.message_primary)
    assert error.sqlstate == "AT002" and "$.n" in (error.diag.message_primary or "")
    assert upsert_error(db, "s", params=[1]).sqlstate == "AT002"
    assert error_of(db, "select anchor.cron_upsert('s', 'Job', '* * * * *', null)").sqlstate == "AT002"
    assert schedule(db, "s") is None


def test_date_parameters_left_out_are_filled_by_the_fire_time_so_they_are_not_required(db: Conn) -> None:
    assert upsert(db, "report:42", task_name="Report", params={"userId": 42}) == "created"
    missing = upsert_error(db, "report:x", task_name="Report", params={})
    assert missing.sqlstate == "AT002" and "userId" in (missing.diag.message_primary or "")
    bad_date = upsert_error(db, "report:y", task_name="Report", params={"userId": 1, "date": "yesterday"})
    assert bad_date.sqlstate == "AT002" and "$.date" in (bad_date.diag.message_primary or "")


def test_an_unknown_or_inactive_task_is_refused_as_an_enqueue_refuses_it(db: Conn) -> None:
    error = upsert_error(db, "s", task_name="NoSuchTask")
    assert (error.sqlstate, error.diag.message_primary) == ("AT001", "unknown task 'NoSuchTask'")
    register(db, definition("Job"), version=2)  # Tick and Report become inactive
    assert upsert_error(db, "s", task_name="Report", params={"userId": 1}).sqlstate == "AT001"


@pytest.mark.parametrize(
    ("name", "expression", "timezone", "message"),
    [
        ("", "* * * * *", None, "cron_upsert: name must be a non-empty string"),
        (None, "* * * * *", None, "cron_upsert: name must be a non-empty string"),
        ("x" * 256, "* * * * *", None, f"cron_upsert: name {'x' * 40}... of 256 bytes {OVER}"),
        (" padded", "* * * * *", None, f"cron_upsert: name ' padded' {SPACES}"),
        ("a\tb", "* * * * *", None, f"cron_upsert: name 'a\tb' {SPACES}"),
        ("s", "  ", None, "cron_upsert: schedule 's': cron_expression must be a non-empty string, got '  '"),
        ("s", None, None, "cron_upsert: schedule 's': cron_expression must be a non-empty string, got NULL"),
        ("s", "1 " * 200, None, f"cron_upsert: schedule 's': cron_expression {'1 ' * 20}... of 400 bytes {OVER}"),
        ("s", "* * * * *", "", "cron_upsert: schedule 's': timezone '' must be a time zone name such as " + BERLIN),
    ],
)
def test_bad_arguments_are_refused_with_at003_naming_the_value(
    db: Conn, name: str | None, expression: str | None, timezone: str | None, message: str
) -> None:
    error = upsert_error(db, name, expression=expression, timezone=timezone)
    assert (error.sqlstate, error.diag.message_primary) == ("AT003", message)
    assert db.execute("select count(*) as n from anchor.cron_schedules where source = 'runtime'").fetchone() == {"n": 0}


def test_a_task_name_is_refused_as_a_runtime_schedule_name_active_or_not(db: Conn) -> None:
    for taken in ("Tick", "Job"):
        error = upsert_error(db, taken)
        assert error.sqlstate == "AT003"
        assert error.diag.message_primary == (
            f"cron_upsert: name '{taken}' is the name of a task, which only that task's cronjob may use"
        )
        assert error.diag.message_hint == f"Give the runtime schedule a name of its own, such as '{taken}:nightly'."
    assert schedule(db, "Tick")["source"] == "yaml"  # type: ignore[index]
    register(db, definition("Job"), version=2)  # Report becomes inactive; its name stays taken
    assert upsert_error(db, "Report").sqlstate == "AT003"


def test_registering_a_cronjob_named_like_a_runtime_schedule_fails_naming_it(db: Conn) -> None:
    upsert(db, "Nightly", params={"n": 3})
    error = error_of(
        db,
        "select anchor.register_tasks(%s::jsonb, 2)",
        json.dumps([definition("Job"), cron_def("Tick", "*/10 * * * * *"), cron_def("Nightly", "0 0 3 * * *")]),
    )
    assert error.sqlstate == "AT003"
    assert error.diag.message_primary == (
        "task Nightly: its cronjob's schedule would be named 'Nightly', "
        "which the runtime schedule of task Job already has"
    )
    db.rollback()
    row = schedule(db, "Nightly")
    assert row is not None and (row["source"], row["task_name"], row["params"]) == ("runtime", "Job", {"n": 3})


# --- registration leaves runtime schedules alone -----------------------------------------------------------


def test_registering_the_yaml_never_removes_or_changes_runtime_schedules(db: Conn) -> None:
    upsert(db, "a", params={"n": 1})
    upsert(db, "b", task_name="Tick", expression="0 0 * * * *", params={"n": 2})
    fire(db, "a", None, [], T0 + timedelta(days=1), T0)
    before = {name: schedule(db, name) for name in ("a", "b")}
    # Tick's cronjob removed and Job's schema changed: the YAML schedule goes, the runtime ones stay as they were
    register(db, definition("Job", description="changed"), definition("Tick"), version=2)
    assert schedule(db, "Tick") is None
    assert {name: schedule(db, name) for name in ("a", "b")} == before
    register(db, definition("Job"), definition("Tick"), version=3)
    assert {name: schedule(db, name) for name in ("a", "b")} == before


def test_a_runtime_schedule_of_a_task_no_longer_registered_waits_for_it(db: Conn) -> None:
    upsert(db, "s", expression="* * * * * *")
    fire(db, "s", None, [], T0, T0 - timedelta(seconds=1))
    register(db, definition("Job"), version=2)  # Tick inactive: nothing else is due but Tick's runtime schedule
    upsert(db, "t", expression="* * * * * *")
    register(db, definition("Tick"), version=3)  # now Job is inactive
    later = T0 + timedelta(minutes=5)
    assert take_due(db, later) == []
    wake = db.execute("select wake_at from anchor.cron_next_wake(p_now => %s)", (later,)).fetchone()
    assert wake == {"wake_at": None}
    listed = db.execute("select name, task_active from anchor.cron_list_v2() where source = 'runtime'").fetchall()
    assert listed == [{"name": "s", "task_active": False}, {"name": "t", "task_active": False}]
    register(db, definition("Job"), version=4)
    assert sorted(r["name"] for r in take_due(db, later)) == ["s", "t"]


def test_deleting_a_definition_row_takes_its_runtime_schedules_with_it(db: Conn) -> None:
    upsert(db, "s")
    db.execute("delete from anchor.task_definitions where name = 'Job'")
    assert schedule(db, "s") is None


# --- roles ---------------------------------------------------------------------------------------------


def test_the_application_creates_and_deletes_runtime_schedules_but_cannot_pause_them(
    db: Conn, logins: dict[str, str]  # noqa: F811
) -> None:
    register(db, definition("Job"), cron_def("Tick", "*/10 * * * * *"), version=2)  # logins registered Job alone
    app = logins["anchor_enqueuer"]
    assert run_as(app, "select anchor.cron_upsert('user:1', 'Job', '0 0 9 * * *', '{\"n\": 1}', 'Europe/Paris')") == [
        ("created",)
    ]
    assert schedule(db, "user:1")["timezone"] == "Europe/Paris"  # type: ignore[index]
    assert refused(app, "select anchor.cron_pause('user:1')")
    assert refused(app, "select * from anchor.cron_list_v2()")
    assert refused(app, "select * from anchor.cron_schedules")
    assert run_as(app, "select anchor.cron_delete('user:1')") == [("deleted",)]
    with pytest.raises(psycopg.Error) as info:
        run_as(app, "select anchor.cron_delete('Tick')")
    assert info.value.sqlstate == "AT003"
    worker = logins["anchor_worker"]
    assert [row[0] for row in run_as(worker, "select name from anchor.cron_list_v2()")] == ["Tick"]
    assert run_as(logins["anchor_admin"], "select anchor.cron_pause('Tick')") == [("paused",)]
