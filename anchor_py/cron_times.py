"""Cron fire times, computed in Python only (pure functions, no database).

Cron expressions are evaluated with croniter and ``second_at_beginning=True``: six fields, seconds
first (``*/30 * * * * *`` every 30 s, ``0 0 2 * * *`` 02:00:00 daily); five fields mean second 0. Fire
times are computed in the schedule's timezone (UTC unless ``cronjob.timezone`` names one) and returned
in UTC.

Missed fires: a fire is missed only when it is more than ``grace`` (1 s) late, i.e. every worker was
down or busy past it. A run of missed fires yields one task, for the latest of them; with
``cronjob.catchUp: N`` up to the latest N are enqueued, oldest first. Fires within the grace are always
enqueued.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

__all__ = [
    "CronError",
    "FirePlan",
    "build_params",
    "check_schedule",
    "next_fire_after",
    "plan_fires",
    "schedule_zone",
]

# Counting the fires a long outage dropped walks them one by one; past this many the count is a floor.
MISSED_COUNT_LIMIT = 10_000

_ONE_MICROSECOND = timedelta(microseconds=1)


class CronError(ValueError):
    """A schedule cannot fire as configured (bad expression or timezone, params that cannot be built).

    At run time the schedule is paused with this message recorded; other schedules go on.
    """


def schedule_zone(name: str) -> tzinfo:
    """The tzinfo of a schedule's ``timezone`` (an IANA name; ``UTC`` by default)."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: e.g. 'America' is a directory
        raise CronError(f"timezone {name!r} is not a known time zone name (e.g. 'Europe/Berlin')") from exc


def _iterator(expression: str, start: datetime, zone: tzinfo) -> croniter:
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise CronError(
            f"cron expression {expression!r} has {len(fields)} fields; expected six "
            "(second minute hour day-of-month month day-of-week) or five (second 0)"
        )
    try:
        return croniter(" ".join(fields), start.astimezone(zone), second_at_beginning=True)
    except (ValueError, KeyError, TypeError) as exc:  # croniter's errors subclass ValueError
        raise CronError(f"cron expression {expression!r} is invalid: {exc}") from exc


def _step(it: croniter, forward: bool, expression: str) -> datetime:
    try:
        value = it.get_next(datetime) if forward else it.get_prev(datetime)
    except Exception as exc:  # croniter raises its own errors for impossible dates (e.g. 30 February)
        raise CronError(f"cron expression {expression!r} has no usable fire time: {exc}") from exc
    if not isinstance(value, datetime):  # pragma: no cover - croniter honours ret_type
        raise CronError(f"cron expression {expression!r}: croniter returned {value!r}")
    return value.astimezone(UTC)


def next_fire_after(expression: str, zone: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (aware), in UTC."""
    return _step(_iterator(expression, after, schedule_zone(zone)), True, expression)


def check_schedule(name: str, expression: str, zone: str | None) -> None:
    """Raises CronError naming the schedule when the cron loop could not compute its fire times (UTC when
    ``zone`` is None), TypeError when an argument is not a string. The runners check a runtime schedule
    with it before storing it: SQL stores any expression, and the loop would pause the schedule at run time.
    """
    for label, value in (("name", name), ("cron_expression", expression), ("timezone", zone)):
        if not isinstance(value, str) and not (label == "timezone" and value is None):
            raise TypeError(f"schedule {name!r}: {label} must be a string, got {type(value).__name__}")
    try:
        next_fire_after(expression, "UTC" if zone is None else zone, datetime.now(UTC))
    except CronError as exc:
        raise CronError(f"schedule {name!r}: {exc}") from None


@dataclass(frozen=True)
class FirePlan:
    """What one round does for a schedule: the fire times to enqueue (ascending), how many due fire
    times it drops as missed, and the schedule's next fire time (strictly after now)."""

    fire_times: tuple[datetime, ...]
    missed: int
    next_fire_at: datetime


def plan_fires(
    expression: str,
    zone: str,
    next_fire_at: datetime | None,
    now: datetime,
    *,
    grace: timedelta = timedelta(seconds=1),
    catch_up: int = 0,
) -> FirePlan:
    """Plans a due schedule's fires at ``now``.

    ``next_fire_at`` is the stored next fire time (None: not computed yet, so nothing fires and the
    next fire time is the first one after ``now``). The due fire times are those in
    ``[next_fire_at, now]``; those at most ``grace`` late all fire; of the older (missed) ones, the
    latest ``max(catch_up, 1)`` fire, oldest first, and the rest count as missed.
    """
    tz = schedule_zone(zone)
    upcoming = _step(_iterator(expression, now, tz), True, expression)
    if next_fire_at is None or next_fire_at > now:
        return FirePlan((), 0, upcoming if next_fire_at is None else next_fire_at)

    keep_missed = max(catch_up, 1)
    on_time: list[datetime] = []
    kept: list[datetime] = []
    dropped = 0
    # walk back from now: get_prev is strictly before its start, so start a microsecond after now
    it = _iterator(expression, now + _ONE_MICROSECOND, tz)
    while True:
        fire = _step(it, False, expression)
        if fire < next_fire_at:
            break
        if now - fire <= grace:
            on_time.append(fire)
        elif len(kept) < keep_missed:
            kept.append(fire)
        else:
            dropped += 1
            if dropped >= MISSED_COUNT_LIMIT:
                break
    return FirePlan(tuple(sorted(kept + on_time)), dropped, upcoming)


def build_params(schema: Any, params: Any, fire_at: datetime) -> dict[str, Any]:
    """The task params for one fire: ``cronjob.parameters``, plus every required ``format: date`` /
    ``date-time`` string parameter they do not give, filled from the fire time (``fire_at``, aware, in
    the schedule's zone: a daily 01:00 report in Asia/Shanghai gets the Shanghai date).

    ``schema`` and ``params`` are the stored JSON, which may have any shape. Raises CronError for params
    that are not an object, a schema whose ``properties`` / ``required`` are not an object / a list of
    names, and naming the required parameters that are neither given nor fillable.
    """
    if not isinstance(params, Mapping):
        raise CronError(f"cronjob.parameters must be an object, got {json.dumps(params)[:200]}")
    schema = schema if isinstance(schema, Mapping) else {}
    properties = schema.get("properties") or {}
    required = schema.get("required") or []
    if not isinstance(properties, Mapping) or not isinstance(required, list) or not all(
        isinstance(name, str) for name in required
    ):
        raise CronError(
            "the task's parameter schema is malformed: properties must be an object and required a list of "
            f"names, got properties {json.dumps(properties)[:200]}, required {json.dumps(required)[:200]}"
        )
    result = dict(params)
    unfillable = []
    for name in required:
        if result.get(name) is not None:
            continue
        prop = properties.get(name)
        prop = prop if isinstance(prop, Mapping) else {}
        kind = (prop.get("type", "string"), prop.get("format"))
        if kind == ("string", "date"):
            result[name] = fire_at.date().isoformat()
        elif kind == ("string", "date-time"):
            result[name] = fire_at.isoformat()
        else:
            unfillable.append(name)
    if unfillable:
        raise CronError(
            f"required parameters {', '.join(unfillable)} are not in cronjob.parameters and cannot be "
            "filled from the fire time (only format: date / date-time strings can)"
        )
    return result
