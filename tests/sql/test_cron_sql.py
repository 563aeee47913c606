"""The cron part of the SQL core (0007_cron): schedules synced from definitions, fenced firing with one
task per fire time, overlap, pause/resume/list, failure pausing. Fire times are passed in (Python computes
them), and every call takes p_now, so nothing here waits for a clock."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.sql.factories import Conn, claim, definition, fail, register

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def cron_def(name: str = "Tick", expression: str = "* * * * * *", **cron: Any) -> dict[str, Any]:
    return definition(name, cron={"expression": expression, **cron})


def schedule(db: Conn, name: str = "Tick") -> dict[str, Any] | None:
    return db.execute("select * from anchor.cron_schedules where name = %s", (name,)).fetchone()


def fire(
    db: Conn,
    name: str,
    expected: datetime | None,
    fire_times: list[datetime],
    next_fire_at: datetime,
    now: datetime,
    params: list[dict[str, Any]] | None = None,
    missed: int = 0,
) -> list[dict[str, Any]]:
    return db.execute(
        """select * from anchor.cron_fire(name => %s, expected_next_fire_at => %s, fire_times => %s::timestamptz[],
        fire_params => %s::jsonb, next_fire_at => %s, missed => %s, p_now => %s)""",
        (name, expected, fire_times, json.dumps(params or [{} for _ in fire_times]), next_fire_at, missed, now),
    ).fetchall()


def take_due(db: Conn, now: datetime) -> list[dict[str, Any]]:
    return db.execute("select * from anchor.cron_take_due(p_now => %s)", (now,)).fetchall()


def start(db: Conn, name: str = "Tick", first: datetime = T0) -> None:
    """Gives a fresh schedule its first next fire time, as a cron loop would."""
    assert fire(db, name, None, [], first, first - timedelta(seconds=1)) == []


def tasks(db: Conn, name: str = "Tick") -> list[dict[str, Any]]:
    return db.execute("select * from anchor.tasks where name = %s order by id", (name,)).fetchall()


def sqlstate_of(db: Conn, sql: str, *args: Any) -> str | None:
    with pytest.raises(psycopg.Error) as info:
        db.execute(sql, args)
    return info.value.sqlstate


# --- sync from the definitions -------------------------------------------------------------------------


def test_registering_a_cron_definition_creates_its_schedule(db: Conn) -> None:
    register(
        db,
        cron_def("Tick", "*/30 * * * * *", parameters={"n": 3}, timezone="Asia/Shanghai", catch_up=2, overlap="allow"),
        definition("Plain"),
    )
    row = schedule(db)
    assert row is not None
    assert (row["expression"], row["timezone"], row["params"], row["catch_up"], row["overlap"]) == (
        "*/30 * * * * *",
        "Asia/Shanghai",
        {"n": 3},
        2,
        "allow",
    )
    assert row["next_fire_at"] is None and not row["paused"]
    assert schedule(db, "Plain") is None


def test_defaults_utc_no_catch_up_overlap_skip(db: Conn) -> None:
    register(db, cron_def())
    row = schedule(db)
    assert row is not None
    assert (row["timezone"], row["params"], row["catch_up"], row["overlap"]) == ("UTC", {}, 0, "skip")


def test_changed_expression_resets_the_next_fire_time_and_keeps_the_rest(db: Conn) -> None:
    register(db, cron_def("Tick", "* * * * * *"), version=1)
    start(db)
    db.execute("select anchor.cron_pause('Tick')")
    register(db, cron_def("Tick", "*/5 * * * * *"), version=2)
    row = schedule(db)
    assert row is not None
    assert row["expression"] == "*/5 * * * * *" and row["next_fire_at"] is None
    assert row["paused"], "an operator's pause survives a redeploy"


def test_unchanged_cron_keeps_its_next_fire_time_across_registrations(db: Conn) -> None:
    register(db, cron_def(), definition("Other"), version=1)
    start(db)
    register(db, cron_def(), definition("Other", description="changed"), version=2)
    row = schedule(db)
    assert row is not None and row["next_fire_at"] == T0


def test_removed_cronjob_or_definition_stops_the_schedule(db: Conn) -> None:
    register(db, cron_def("A"), cron_def("B"), version=1)
    assert schedule(db, "A") is not None and schedule(db, "B") is not None
    # A loses its cronjob, B is removed from the file (deactivated)
    register(db, definition("A"), version=2)
    assert schedule(db, "A") is None
    assert schedule(db, "B") is None
    assert take_due(db, T0 + timedelta(days=1)) == []


@pytest.mark.parametrize(
    ("cron", "fragment"),
    [
        ({"parameters": {}}, "cron.expression"),
        ({"expression": ""}, "cron.expression"),
        ({"expression": "* * * * * *", "overlap": "sometimes"}, '"sometimes"'),
        ({"expression": "* * * * * *", "catch_up": -1}, "cron.catch_up: -1"),
        ({"expression": "* * * * * *", "catch_up": 1.5}, "cron.catch_up: 1.5"),
        ({"expression": "* * * * * *", "timezone": 5}, "cron.timezone: 5"),
        ({"expression": "* * * * * *", "parameters": [1]}, "cron.parameters"),
        ({"expression": "* * * * * *", "every": "day"}, "cron.every: unknown key"),
    ],
)
def test_malformed_cron_object_is_refused_naming_task_and_value(db: Conn, cron: dict[str, Any], fragment: str) -> None:
    with pytest.raises(psycopg.Error) as info:
        register(db, definition("Tick", cron=cron))
    assert info.value.sqlstate == "AT003"
    assert "task Tick" in str(info.value) and fragment in str(info.value)
    assert schedule(db) is None


# --- firing --------------------------------------------------------------------------------------------


def test_fire_enqueues_with_scheduled_at_and_advances(db: Conn) -> None:
    register(db, cron_def(parameters={"n": 1}))
    start(db)
    now = T0 + timedelta(milliseconds=200)
    [due] = take_due(db, now)
    assert due["name"] == "Tick" and due["next_fire_at"] == T0 and due["db_now"] == now
    assert due["params_schema"]["properties"]["n"] == {"type": "integer"}
    [result] = fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), now, params=[{"n": 1}])
    assert result["outcome"] == "enqueued" and result["fire_at"] == T0
    [task] = tasks(db)
    assert task["id"] == result["task_id"] and task["scheduled_at"] == T0 and task["params"] == {"n": 1}
    assert task["state"] == "pending" and task["created_at"] == now
    row = schedule(db)
    assert row is not None
    assert row["next_fire_at"] == T0 + timedelta(seconds=1) and row["last_fired_at"] == T0
    assert row["last_task_id"] == task["id"] and row["fired_count"] == 1
    assert take_due(db, now) == [], "not due again before its next fire time"


def test_fired_task_has_the_definitions_policy(db: Conn) -> None:
    policy = {"retry_interval": "1m,2m", "max_attempts": 3, "timeout": "5m", "priority": 4, "queue": "cron"}
    register(db, definition("Tick", cron={"expression": "* * * * * *"}, **policy))
    start(db)
    fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), T0)
    [task] = tasks(db)
    assert (task["max_attempts"], task["timeout"], task["priority"], task["queue"]) == (
        3,
        timedelta(minutes=5),
        4,
        "cron",
    )
    assert task["retry_intervals"] == [timedelta(minutes=1), timedelta(minutes=2)]


def test_stale_caller_changes_nothing(db: Conn) -> None:
    register(db, cron_def())
    start(db)
    fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), T0)
    # a second loop that read next_fire_at = T0 before the first one advanced it
    assert [r["outcome"] for r in fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), T0)] == ["stale"]
    assert len(tasks(db)) == 1


def test_a_fire_time_is_recorded_once_even_if_the_fence_is_bypassed(db: Conn) -> None:
    register(db, cron_def())
    start(db)
    fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), T0)
    # a caller that passes the current next_fire_at but an already fired time: the key refuses it
    results = fire(db, "Tick", T0 + timedelta(seconds=1), [T0], T0 + timedelta(seconds=2), T0 + timedelta(seconds=1))
    assert [r["outcome"] for r in results] == ["duplicate"]
    assert len(tasks(db)) == 1
    assert db.execute("select count(*) as n from anchor.cron_fires where name = 'Tick'").fetchone() == {"n": 1}


def test_catch_up_fires_in_one_call_oldest_first(db: Conn) -> None:
    register(db, cron_def(catch_up=3))
    start(db)
    times = [T0 + timedelta(seconds=s) for s in (2, 3, 4, 5)]
    now = T0 + timedelta(seconds=5, milliseconds=500)
    results = fire(db, "Tick", T0, times, T0 + timedelta(seconds=6), now, missed=2)
    assert [r["outcome"] for r in results] == ["enqueued"] * 4
    assert [t["scheduled_at"] for t in tasks(db)] == times
    row = schedule(db)
    assert (
        row is not None and row["missed_count"] == 2 and row["fired_count"] == 4 and row["last_fired_at"] == times[-1]
    )


def test_overlap_skip_enqueues_nothing_while_the_previous_task_is_live(db: Conn) -> None:
    register(db, cron_def())
    start(db)
    fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), T0)
    [first] = tasks(db)
    t1 = T0 + timedelta(seconds=1)
    [skipped] = fire(db, "Tick", t1, [t1], t1 + timedelta(seconds=1), t1)
    assert skipped["outcome"] == "skipped" and skipped["task_id"] == first["id"]
    assert len(tasks(db)) == 1
    row = schedule(db)
    assert row is not None and row["skipped_count"] == 1 and row["last_task_id"] == first["id"]
    assert row["next_fire_at"] == t1 + timedelta(seconds=1), "a skip still advances the schedule"
    recorded = db.execute("select * from anchor.cron_fires where fire_at = %s", (t1,)).fetchone()
    assert recorded is not None and recorded["outcome"] == "skipped" and recorded["task_id"] == first["id"]


def test_overlap_skip_counts_running_and_failing_as_live_and_finished_as_not(db: Conn) -> None:
    register(db, definition("Tick", cron={"expression": "* * * * * *"}, on_failed=True, max_attempts=1))
    start(db)
    fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), T0)
    [first] = tasks(db)
    [work] = claim(db, now=T0)  # running
    t = T0 + timedelta(seconds=1)
    assert fire(db, "Tick", t, [t], t + timedelta(seconds=1), t)[0]["outcome"] == "skipped"
    assert fail(db, first["id"], work["attempt"], now=t) == "failing"
    t += timedelta(seconds=1)
    assert fire(db, "Tick", t, [t], t + timedelta(seconds=1), t)[0]["outcome"] == "skipped"
    db.execute("select anchor.finish_failure(%s, 1, 'worker-1')", (first["id"],))
    t += timedelta(seconds=1)
    [result] = fire(db, "Tick", t, [t], t + timedelta(seconds=1), t)
    assert result["outcome"] == "enqueued" and result["task_id"] != first["id"]


def test_overlap_allow_enqueues_anyway(db: Conn) -> None:
    register(db, cron_def(overlap="allow"))
    start(db)
    fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), T0)
    t1 = T0 + timedelta(seconds=1)
    assert fire(db, "Tick", t1, [t1], t1 + timedelta(seconds=1), t1)[0]["outcome"] == "enqueued"
    assert len(tasks(db)) == 2


def test_bad_fire_arguments_are_refused_naming_the_schedule(db: Conn) -> None:
    register(db, cron_def())
    start(db)
    later = T0 + timedelta(seconds=10)
    cases = [
        ([later], T0 + timedelta(seconds=11), T0, "in the future"),  # fire time after now
        ([T0], T0, T0, "next_fire_at"),  # next fire time not after the fire times
    ]
    for fire_times, next_at, now, fragment in cases:
        with pytest.raises(psycopg.Error) as info:
            fire(db, "Tick", T0, fire_times, next_at, now)
        assert info.value.sqlstate == "AT003" and "cron_fire Tick" in str(info.value) and fragment in str(info.value)
    with pytest.raises(psycopg.Error) as info:
        fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), T0, params=[{}, {}])
    assert info.value.sqlstate == "AT003" and "fire_params" in str(info.value)
    with pytest.raises(psycopg.Error) as info:
        fire(db, "Nope", T0, [T0], T0 + timedelta(seconds=1), T0)
    assert info.value.sqlstate == "AT007" and "Nope" in str(info.value)


def test_params_that_break_the_schema_are_refused(db: Conn) -> None:
    register(db, cron_def())
    start(db)
    with pytest.raises(psycopg.Error) as info:
        fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), T0, params=[{"n": "x"}])
    assert info.value.sqlstate == "AT002"


def test_old_fire_records_are_pruned(db: Conn) -> None:
    register(db, cron_def(overlap="allow"))
    start(db)
    fire(db, "Tick", T0, [T0], T0 + timedelta(seconds=1), T0)
    later = T0 + timedelta(days=2)
    db.execute("update anchor.cron_schedules set next_fire_at = %s", (later,))
    fire(db, "Tick", later, [later], later + timedelta(seconds=1), later)
    rows = db.execute("select fire_at from anchor.cron_fires order by fire_at").fetchall()
    assert [r["fire_at"] for r in rows] == [later]


# --- concurrency ---------------------------------------------------------------------------------------


def test_take_due_skips_schedules_another_loop_holds(dsn: str, db: Conn) -> None:
    register(db, cron_def("A"), cron_def("B"))
    start(db, "A")
    start(db, "B")
    now = T0 + timedelta(milliseconds=100)
    with psycopg.connect(dsn, row_factory=dict_row) as first, psycopg.connect(dsn, row_factory=dict_row) as second:
        taken_first = first.execute(
            "select * from anchor.cron_take_due(max_schedules => 1, p_now => %s)", (now,)
        ).fetchall()
        taken_second = second.execute("select * from anchor.cron_take_due(p_now => %s)", (now,)).fetchall()
        assert [r["name"] for r in taken_first] == ["A"]
        assert [r["name"] for r in taken_second] == ["B"], "the locked schedule is skipped, not waited for"
        first.rollback()
        second.rollback()


def test_racing_loops_fire_each_time_once(dsn: str, db: Conn) -> None:
    """Many connections take, fire and commit the same schedule at once for 30 consecutive fire times."""
    register(db, cron_def(overlap="allow"))
    start(db)
    fired: list[tuple[datetime, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def loop() -> None:
        try:
            with psycopg.connect(dsn, row_factory=dict_row) as conn:
                for step in range(30):
                    now = T0 + timedelta(seconds=step, milliseconds=500)
                    barrier.wait()
                    rows = take_due(conn, now)
                    for row in rows:
                        results = fire(
                            conn, row["name"], row["next_fire_at"], [row["next_fire_at"]],
                            row["next_fire_at"] + timedelta(seconds=1), now,
                        )  # fmt: skip
                        with lock:
                            fired.extend((r["fire_at"], r["task_id"]) for r in results if r["outcome"] == "enqueued")
                    conn.commit()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    times = [f for f, _ in fired]
    assert len(times) == len(set(times)), "no fire time twice"
    rows = tasks(db)
    assert sorted(t["scheduled_at"] for t in rows) == sorted(times)
    assert len(rows) == 30


# --- operations ----------------------------------------------------------------------------------------


def test_pause_resume_and_list(db: Conn) -> None:
    register(db, cron_def("A", "0 0 2 * * *"), cron_def("B"))
    start(db, "A")
    start(db, "B")
    assert db.execute("select anchor.cron_pause('A') as r").fetchone() == {"r": "paused"}
    assert db.execute("select anchor.cron_pause('A') as r").fetchone() == {"r": "paused"}, "idempotent"
    assert [r["name"] for r in take_due(db, T0 + timedelta(days=1))] == ["B"], "a paused schedule is not taken"
    listed = db.execute("select * from anchor.cron_list()").fetchall()
    assert [(r["name"], r["expression"], r["paused"]) for r in listed] == [
        ("A", "0 0 2 * * *", True),
        ("B", "* * * * * *", False),
    ]
    assert listed[1]["next_fire_at"] == T0
    # a loop that read A before the pause cannot fire it
    assert fire(db, "A", T0, [T0], T0 + timedelta(days=1), T0)[0]["outcome"] == "stale"

    assert db.execute("select anchor.cron_resume('A') as r").fetchone() == {"r": "resumed"}
    row = schedule(db, "A")
    assert row is not None and not row["paused"] and row["next_fire_at"] is None, "recomputed from now, no catch-up"
    assert "A" in [r["name"] for r in take_due(db, T0)]


def test_pause_and_resume_of_an_unknown_schedule(db: Conn) -> None:
    for function in ("cron_pause", "cron_resume", "cron_fail"):
        args = "'Nope', 'x'" if function == "cron_fail" else "'Nope'"
        with pytest.raises(psycopg.Error) as info:
            db.execute(f"select anchor.{function}({args})")
        assert info.value.sqlstate == "AT007" and "'Nope'" in str(info.value)


def test_cron_fail_pauses_with_the_error_and_resume_clears_it(db: Conn) -> None:
    register(db, cron_def())
    start(db)
    assert db.execute("select anchor.cron_fail('Tick', 'bad expression', p_now => %s) as r", (T0,)).fetchone() == {
        "r": "paused"
    }
    row = schedule(db)
    assert row is not None and row["paused"] and row["last_error"] == "bad expression" and row["last_error_at"] == T0
    assert take_due(db, T0 + timedelta(days=1)) == []
    db.execute("select anchor.cron_resume('Tick')")
    row = schedule(db)
    assert row is not None and not row["paused"] and row["last_error"] is None


def test_next_wake_is_the_earliest_unpaused_fire_time(db: Conn) -> None:
    assert db.execute("select * from anchor.cron_next_wake(p_now => %s)", (T0,)).fetchone() == {
        "wake_at": None,
        "db_now": T0,
    }
    register(db, cron_def("A"), cron_def("B"))
    start(db, "A", T0 + timedelta(seconds=5))
    start(db, "B", T0 + timedelta(seconds=3))
    wake = db.execute("select * from anchor.cron_next_wake(p_now => %s)", (T0,)).fetchone()
    assert wake == {"wake_at": T0 + timedelta(seconds=3), "db_now": T0}
    db.execute("select anchor.cron_pause('B')")
    wake = db.execute("select * from anchor.cron_next_wake(p_now => %s)", (T0,)).fetchone()
    assert wake is not None and wake["wake_at"] == T0 + timedelta(seconds=5)


def test_changes_that_need_a_new_fire_time_notify(dsn: str, db: Conn) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen anchor_cron")
        register(db, cron_def("Tick", "* * * * * *"), version=1)  # new schedule
        start(db)  # advancing: no notification
        db.execute("select anchor.cron_pause('Tick')")  # pausing: no notification
        db.execute("select anchor.cron_resume('Tick')")  # resumed
        start(db)
        register(db, cron_def("Tick", "*/2 * * * * *"), version=2)  # expression changed
        payloads = [n.payload for n in listener.notifies(timeout=1.0)]
    assert payloads == ["Tick", "Tick", "Tick"]
