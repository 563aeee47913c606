"""Next fire times and fire planning (anchor_py.cron_times): pure Python, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from anchor_py.cron_times import CronError, build_params, next_fire_after, plan_fires

UTC = UTC


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# --- the guide's expressions, pinned -------------------------------------------------------------------


def test_every_30_seconds_fires_on_second_0_and_30() -> None:
    t = at(2024, 5, 1, 12, 0, 10)
    first = next_fire_after("*/30 * * * * *", "UTC", t)
    second = next_fire_after("*/30 * * * * *", "UTC", first)
    third = next_fire_after("*/30 * * * * *", "UTC", second)
    assert (first, second, third) == (at(2024, 5, 1, 12, 0, 30), at(2024, 5, 1, 12, 1, 0), at(2024, 5, 1, 12, 1, 30))


def test_daily_at_2am_is_seconds_first() -> None:
    # `0 0 2 * * *` is second 0, minute 0, hour 2: 02:00:00 daily (not minute 0 of hour 0 on the 2nd)
    assert next_fire_after("0 0 2 * * *", "UTC", at(2024, 5, 1, 3, 0, 0)) == at(2024, 5, 2, 2, 0, 0)
    assert next_fire_after("0 0 2 * * *", "UTC", at(2024, 5, 1, 1, 59, 59)) == at(2024, 5, 1, 2, 0, 0)


def test_next_fire_is_strictly_after() -> None:
    assert next_fire_after("*/30 * * * * *", "UTC", at(2024, 5, 1, 12, 0, 30)) == at(2024, 5, 1, 12, 1, 0)


def test_five_fields_mean_second_zero() -> None:
    assert next_fire_after("30 2 * * *", "UTC", at(2024, 5, 1, 0, 0, 0)) == at(2024, 5, 1, 2, 30, 0)
    assert next_fire_after("* * * * *", "UTC", at(2024, 5, 1, 0, 0, 1)) == at(2024, 5, 1, 0, 1, 0)


def test_timezone_moves_the_fire_time() -> None:
    # 01:00 in Shanghai (UTC+8, no DST) is 17:00 UTC the day before
    assert next_fire_after("0 0 1 * * *", "Asia/Shanghai", at(2024, 5, 1, 0, 0, 0)) == at(2024, 5, 1, 17, 0, 0)
    # New York in summer is UTC-4
    assert next_fire_after("0 0 9 * * *", "America/New_York", at(2024, 7, 1, 0, 0, 0)) == at(2024, 7, 1, 13, 0, 0)


@pytest.mark.parametrize("expression", ["not a cron", "61 * * * * *", "* * * *", "0 0 0 0 0 0 0 0"])
def test_bad_expression_is_a_cron_error(expression: str) -> None:
    with pytest.raises(CronError, match="cron expression"):
        next_fire_after(expression, "UTC", at(2024, 5, 1))


@pytest.mark.parametrize("zone", ["Mars/Olympus", "America", "../../etc/passwd", ""])
def test_bad_timezone_is_a_cron_error(zone: str) -> None:
    # "America" is a directory of zones, not a zone
    with pytest.raises(CronError, match=f"timezone '{zone}'"):
        next_fire_after("* * * * * *", zone, at(2024, 5, 1))


# --- planning a round ----------------------------------------------------------------------------------


def test_unscheduled_plans_no_fire_and_the_next_time() -> None:
    plan = plan_fires("*/30 * * * * *", "UTC", None, at(2024, 5, 1, 12, 0, 10))
    assert plan.fire_times == () and plan.missed == 0
    assert plan.next_fire_at == at(2024, 5, 1, 12, 0, 30)


def test_not_yet_due_plans_nothing() -> None:
    plan = plan_fires("*/30 * * * * *", "UTC", at(2024, 5, 1, 12, 0, 30), at(2024, 5, 1, 12, 0, 29))
    assert plan.fire_times == () and plan.next_fire_at == at(2024, 5, 1, 12, 0, 30)


def test_on_time_fire() -> None:
    now = at(2024, 5, 1, 12, 0, 30) + timedelta(milliseconds=300)
    plan = plan_fires("*/30 * * * * *", "UTC", at(2024, 5, 1, 12, 0, 30), now)
    assert plan.fire_times == (at(2024, 5, 1, 12, 0, 30),)
    assert plan.missed == 0 and plan.next_fire_at == at(2024, 5, 1, 12, 1, 0)


def test_exactly_at_the_fire_time() -> None:
    plan = plan_fires("* * * * * *", "UTC", at(2024, 5, 1, 12, 0, 5), at(2024, 5, 1, 12, 0, 5))
    assert plan.fire_times == (at(2024, 5, 1, 12, 0, 5),) and plan.next_fire_at == at(2024, 5, 1, 12, 0, 6)


def test_grace_boundary() -> None:
    fire = at(2024, 5, 1, 2, 0, 0)
    # exactly the grace late: still on time
    assert plan_fires("0 0 2 * * *", "UTC", fire, fire + timedelta(seconds=1)).fire_times == (fire,)
    # later than the grace: missed, yet the latest missed fire still yields one task
    late = plan_fires("0 0 2 * * *", "UTC", fire, fire + timedelta(hours=5))
    assert late.fire_times == (fire,) and late.missed == 0
    assert late.next_fire_at == at(2024, 5, 2, 2, 0, 0)


def test_missed_run_yields_one_task_for_the_latest_by_default() -> None:
    # every second, nothing ran from 12:00:00 to 12:00:05.5: 12:00:05 is on time, 12:00:00..04 are missed
    now = at(2024, 5, 1, 12, 0, 5) + timedelta(milliseconds=500)
    plan = plan_fires("* * * * * *", "UTC", at(2024, 5, 1, 12, 0, 0), now)
    assert plan.fire_times == (at(2024, 5, 1, 12, 0, 4), at(2024, 5, 1, 12, 0, 5))
    assert plan.missed == 4
    assert plan.next_fire_at == at(2024, 5, 1, 12, 0, 6)


def test_daily_schedule_down_for_three_days_fires_once() -> None:
    plan = plan_fires("0 0 1 * * *", "UTC", at(2024, 5, 1, 1), at(2024, 5, 3, 17))
    assert plan.fire_times == (at(2024, 5, 3, 1),) and plan.missed == 2


def test_catch_up_n_enqueues_the_latest_n_missed_oldest_first() -> None:
    now = at(2024, 5, 1, 12, 0, 5) + timedelta(milliseconds=500)
    plan = plan_fires("* * * * * *", "UTC", at(2024, 5, 1, 12, 0, 0), now, catch_up=3)
    assert plan.fire_times == (
        at(2024, 5, 1, 12, 0, 2),
        at(2024, 5, 1, 12, 0, 3),
        at(2024, 5, 1, 12, 0, 4),
        at(2024, 5, 1, 12, 0, 5),
    )
    assert plan.missed == 2


def test_catch_up_larger_than_the_gap_takes_every_missed_fire() -> None:
    plan = plan_fires("0 0 1 * * *", "UTC", at(2024, 5, 1, 1), at(2024, 5, 3, 17), catch_up=10)
    assert plan.fire_times == (at(2024, 5, 1, 1), at(2024, 5, 2, 1), at(2024, 5, 3, 1)) and plan.missed == 0


def test_custom_grace() -> None:
    now = at(2024, 5, 1, 12, 0, 5) + timedelta(milliseconds=500)
    plan = plan_fires("* * * * * *", "UTC", at(2024, 5, 1, 12, 0, 0), now, grace=timedelta(seconds=3))
    # 12:00:03..05 are within 3 s: all fire; 12:00:02 is the latest missed; 00 and 01 dropped
    assert [f.second for f in plan.fire_times] == [2, 3, 4, 5] and plan.missed == 2


# --- params from the fire time -------------------------------------------------------------------------

REPORT_SCHEMA = {"type": "object", "required": ["date"], "properties": {"date": {"type": "string", "format": "date"}}}


def test_required_date_is_filled_from_the_fire_time() -> None:
    assert build_params(REPORT_SCHEMA, {}, at(2024, 5, 1, 1)) == {"date": "2024-05-01"}


def test_given_parameter_wins_over_the_fire_time() -> None:
    assert build_params(REPORT_SCHEMA, {"date": "2020-01-01"}, at(2024, 5, 1, 1)) == {"date": "2020-01-01"}


def test_date_is_the_local_date_of_the_schedule_zone() -> None:
    from zoneinfo import ZoneInfo

    fire = at(2024, 4, 30, 17).astimezone(ZoneInfo("Asia/Shanghai"))  # 01:00 on 1 May in Shanghai
    assert build_params(REPORT_SCHEMA, {}, fire) == {"date": "2024-05-01"}


def test_required_date_time_is_filled_with_an_offset() -> None:
    schema = {
        "type": "object",
        "required": ["at", "limit"],
        "properties": {"at": {"type": "string", "format": "date-time"}, "limit": {"type": "integer"}},
    }
    assert build_params(schema, {"limit": 5}, at(2024, 5, 1, 1)) == {"at": "2024-05-01T01:00:00+00:00", "limit": 5}


def test_optional_date_is_left_alone() -> None:
    schema = {"type": "object", "properties": {"date": {"type": "string", "format": "date"}}}
    assert build_params(schema, {}, at(2024, 5, 1, 1)) == {}


def test_unfillable_required_parameters_are_named() -> None:
    schema = {
        "type": "object",
        "required": ["param1", "param2", "date"],
        "properties": {
            "param1": {"type": "string"},
            "param2": {"type": "integer"},
            "date": {"type": "string", "format": "date"},
        },
    }
    with pytest.raises(CronError, match="param1, param2"):
        build_params(schema, {}, at(2024, 5, 1, 1))


@pytest.mark.parametrize(
    ("schema", "params", "message"),
    [
        ({"type": "object"}, "three", 'cronjob.parameters must be an object, got "three"'),
        ({"type": "object"}, [1, 2], r"cronjob.parameters must be an object, got \[1, 2\]"),
        ({"required": [1]}, {}, r"schema is malformed: .* required \[1\]"),
        ({"required": "day"}, {}, 'schema is malformed: .* required "day"'),
        ({"required": ["day"], "properties": "day"}, {}, 'schema is malformed: .*got properties "day"'),
    ],
)
def test_stored_values_of_the_wrong_shape_are_cron_errors(schema: object, params: object, message: str) -> None:
    with pytest.raises(CronError, match=message):
        build_params(schema, params, at(2024, 5, 1, 1))
