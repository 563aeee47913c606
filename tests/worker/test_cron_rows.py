"""No stored schedule stops the cron service: a schedule whose row cannot be used (written directly by a
superuser, or registered with a value the SQL checks let through) is paused with its error recorded,
and every other schedule fires in the same round."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from anchor_py.cron import CronConfig, CronService

Conn = psycopg.Connection[dict[str, Any]]


def at(second: int, micro: int = 500_000) -> datetime:
    return datetime(2024, 5, 1, 12, 0, second, micro, tzinfo=UTC)


def register(db: Conn, *definitions: dict[str, Any]) -> None:
    db.execute("select anchor.register_tasks(%s::jsonb, 1)", (json.dumps(list(definitions)),))


def every_second(name: str, **cron: Any) -> dict[str, Any]:
    return {"name": name, "parameters": {"type": "object"}, "cron": {"expression": "* * * * * *", "overlap": "allow",
                                                                      **cron}}


DEPTH = 2000  # beyond Python's recursion limit
DEEP_PARAMS = '{"a": ' * DEPTH + "{}" + "}" * DEPTH

# Each case: how the Broken schedule is made unusable (SQL run as the postgres superuser after
# registration, or a registered cron object), and what its recorded error must mention.
CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "a timezone that names a directory of zones": ("", {"timezone": "America"}, "America"),
    "stored params that are not an object": (
        """update anchor.cron_schedules set params = '"three"' where name = 'Broken'""", {}, "three"
    ),
    "stored params that are an array": (
        "update anchor.cron_schedules set params = '[1, 2]' where name = 'Broken'", {}, "[1, 2]"
    ),
    "a stored schema whose required list holds a number": (
        """update anchor.task_definitions set params_schema = '{"type": "object", "required": [1]}'
           where name = 'Broken'""", {}, "required",
    ),
    "a stored schema whose properties are not an object": (
        """update anchor.task_definitions set params_schema = '{"required": ["day"], "properties": "day"}'
           where name = 'Broken'""", {}, "properties",
    ),
    "stored params nested too deeply to decode": (
        f"update anchor.cron_schedules set params = '{DEEP_PARAMS}' where name = 'Broken'", {}, "recursion",
    ),
    "an enqueue that fails with a raw error outside the data classes": (
        """create function pg_temp.refuse() returns trigger language plpgsql as $$
           begin raise exception using errcode = '54000', message = 'index row size exceeds the maximum'; end $$;
           create trigger refuse before insert on anchor.tasks for each row when (new.name = 'Broken')
           execute function pg_temp.refuse()""", {}, "54000",
    ),
    "stored params that fail validation at fire time": (
        """update anchor.task_definitions set params_schema =
               '{"type": "object", "properties": {"n": {"type": "integer"}}}' where name = 'Broken';
           update anchor.cron_schedules set params = '{"n": "three"}' where name = 'Broken'""", {}, "AT002",
    ),
    "a stored expression croniter cannot read": (
        "update anchor.cron_schedules set expression = '*/0 * * * * *' where name = 'Broken'", {}, "*/0",
    ),
    "a next fire time of minus infinity": (
        "update anchor.cron_schedules set next_fire_at = '-infinity' where name = 'Broken'", {}, "-infinity",
    ),
    "a due next fire time before the year 1": (
        "update anchor.cron_schedules set next_fire_at = '0044-03-15 BC' where name = 'Broken'", {}, "BC",
    ),
    "a stored timezone that is no zone": (
        "update anchor.cron_schedules set timezone = 'Mars/Olympus' where name = 'Broken'", {}, "Mars/Olympus",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_unusable_schedule_is_paused_and_the_others_fire(case: str, dsn: str, db: Conn) -> None:
    sql, cron, mention = CASES[case]
    register(db, every_second("Tick"), every_second("Broken", **cron))
    if sql:
        db.execute(sql)
    service = CronService(dsn)

    async def rounds() -> list[Any]:
        return [await service.run_once(now=at(second)) for second in (0, 1, 2)]

    first, second, third = asyncio.run(rounds())
    paused = dict(first.paused + second.paused)
    assert list(paused) == ["Broken"] and mention in paused["Broken"], paused
    row = db.execute("select paused, last_error from anchor.cron_schedules where name = 'Broken'").fetchone()
    assert row == {"paused": True, "last_error": paused["Broken"]}
    # the healthy schedule fired in the round that paused the broken one, and goes on
    assert [f.name for f in second.enqueued] == ["Tick"]
    assert third.paused == () and [f.name for f in third.enqueued] == ["Tick"]
    assert db.execute("select count(*) as n from anchor.tasks where name = 'Broken'").fetchone() == {"n": 0}


def test_a_next_fire_time_of_infinity_on_the_only_schedule_leaves_nothing_to_wake_for(dsn: str, db: Conn) -> None:
    register(db, every_second("Never"))
    db.execute("update anchor.cron_schedules set next_fire_at = 'infinity'")
    service = CronService(dsn, CronConfig(max_sleep=timedelta(seconds=7)))
    result = asyncio.run(service.run_once(now=at(0)))
    assert result.taken == 0 and result.next_wake_at is None
    assert service.next_delay(result) == timedelta(seconds=7)
