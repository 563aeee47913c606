"""Cron schedules: fire times computed in Python, fired once per fire time through the database.

The schedules live in ``anchor.cron_schedules`` (see ``sql/migrations/0002_cron.sql``), synced from the
task definitions. Cron expressions are evaluated here only, with croniter and
``second_at_beginning=True``: six fields, seconds first (``*/30 * * * * *`` every 30 s,
``0 0 2 * * *`` 02:00:00 daily); five fields mean second 0. Fire times are computed in the schedule's
timezone (UTC unless ``cronjob.timezone`` names one) and stored in UTC.

``CronService`` is the maintenance service every worker runs. One round (``run_once``) takes the due
schedules ``FOR UPDATE SKIP LOCKED``, plans their fires, enqueues them through ``anchor.cron_fire`` and
advances the next fire times, all in one transaction; between rounds it sleeps until the earliest next
fire time (woken early by ``NOTIFY anchor_cron`` when a schedule is added, changed or resumed).

Missed fires: a fire is missed only when it is more than ``grace`` (1 s) late, i.e. every worker was
down or busy past it. A run of missed fires yields one task, for the latest of them; with
``cronjob.catchUp: N`` up to the latest N are enqueued, oldest first. Fires within the grace are always
enqueued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from croniter import croniter
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from anchor_py import queries
from anchor_py.services import PoolOrDsn

__all__ = [
    "CronConfig",
    "CronError",
    "CronFire",
    "CronRound",
    "CronService",
    "FirePlan",
    "build_params",
    "next_fire_after",
    "plan_fires",
    "schedule_zone",
]

log = logging.getLogger("anchor_py.cron")

# Counting the fires a long outage dropped walks them one by one; past this many the count is a floor.
MISSED_COUNT_LIMIT = 10_000

_ONE_MICROSECOND = timedelta(microseconds=1)


class CronError(ValueError):
    """A schedule cannot fire as configured (bad expression or timezone, params that cannot be built).

    At run time the schedule is paused with this message recorded; other schedules go on.
    """


# --- fire times ---------------------------------------------------------------------------------------


def schedule_zone(name: str) -> tzinfo:
    """The tzinfo of a schedule's ``timezone`` (an IANA name; ``UTC`` by default)."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
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


def build_params(schema: Mapping[str, Any], params: Mapping[str, Any], fire_at: datetime) -> dict[str, Any]:
    """The task params for one fire: ``cronjob.parameters``, plus every required ``format: date`` /
    ``date-time`` string parameter they do not give, filled from the fire time (``fire_at``, aware, in
    the schedule's zone: a daily 01:00 report in Asia/Shanghai gets the Shanghai date).

    Raises CronError naming the required parameters that are neither given nor fillable.
    """
    result = dict(params)
    properties = schema.get("properties") or {}
    unfillable = []
    for name in schema.get("required") or ():
        if result.get(name) is not None:
            continue
        prop = properties.get(name) or {}
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


# --- the service ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CronConfig:
    """How a CronService runs.

    - ``grace``: how late a fire may be and still count as on time (not missed).
    - ``max_sleep``: the longest sleep between rounds, so a lost notification or a schedule changed
      behind the service's back is noticed within it.
    - ``max_schedules``: schedules taken per transaction.
    - ``retry_delay``: the wait after a database error before the next round.
    - ``listen``: wake on ``NOTIFY anchor_cron`` (schedule added, changed, resumed).
    """

    grace: timedelta = timedelta(seconds=1)
    max_sleep: timedelta = timedelta(seconds=60)
    max_schedules: int = 100
    retry_delay: timedelta = timedelta(seconds=2)
    listen: bool = True

    def __post_init__(self) -> None:
        if self.grace < timedelta(0):
            raise ValueError(f"grace must not be negative, got {self.grace}")
        if self.max_sleep <= timedelta(0) or self.retry_delay <= timedelta(0):
            raise ValueError("max_sleep and retry_delay must be above zero")
        if self.max_schedules < 1:
            raise ValueError(f"max_schedules must be at least 1, got {self.max_schedules}")


@dataclass(frozen=True)
class CronFire:
    """One fire time handled: ``enqueued`` (task_id: the new task), ``skipped`` (overlap: the live
    task that blocked it), ``duplicate`` (already fired) or ``stale`` (the schedule moved on)."""

    name: str
    fire_at: datetime | None
    outcome: str
    task_id: int | None


@dataclass(frozen=True)
class CronRound:
    """What one ``run_once`` did."""

    now: datetime
    taken: int = 0
    fires: tuple[CronFire, ...] = ()
    paused: tuple[tuple[str, str], ...] = ()
    next_wake_at: datetime | None = None
    wake_now: datetime | None = field(default=None, repr=False)

    @property
    def enqueued(self) -> tuple[CronFire, ...]:
        return tuple(f for f in self.fires if f.outcome == "enqueued")


# Errors that mean "this schedule cannot fire as configured", not "the database is unwell": our own
# SQLSTATEs (AT001 unknown task, AT002 params, AT003 bad argument) and data exceptions (class 22).
def _is_schedule_error(exc: psycopg.Error) -> bool:
    state = exc.sqlstate or ""
    return state.startswith("AT") or state.startswith("22")


class CronService:
    """The cron maintenance service: fires due schedules, once per fire time across all workers."""

    Config = CronConfig

    def __init__(self, pool_or_dsn: PoolOrDsn, config: CronConfig | None = None) -> None:
        self._target = pool_or_dsn
        self.config = config or CronConfig()
        self._conn: psycopg.AsyncConnection[Any] | None = None  # kept open by run() in DSN mode

    # -- connections

    @contextlib.asynccontextmanager
    async def _listen_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of its own for LISTEN (built like the pool's when possible, so it does not hold
        one of the pool's connections for the service's lifetime)."""
        if isinstance(self._target, str):
            conninfo: object = self._target
            kwargs: dict[str, Any] = {}
        else:
            pool: AsyncConnectionPool[Any] = self._target
            conninfo = pool.conninfo
            kwargs = dict(pool.kwargs) if isinstance(pool.kwargs, dict) else {}
        if not isinstance(conninfo, str):
            async with self._connection() as borrowed:
                await borrowed.set_autocommit(True)
                try:
                    yield borrowed
                finally:  # hand it back as it came
                    with contextlib.suppress(psycopg.Error):
                        await borrowed.execute(queries.CRON_UNLISTEN)
                        await borrowed.set_autocommit(False)
            return
        kwargs["autocommit"] = True
        conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
        async with conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if not isinstance(self._target, str):
            async with self._target.connection() as conn:
                yield conn
            return
        if self._conn is not None and not self._conn.closed:
            try:
                yield self._conn
            except psycopg.OperationalError:
                await self._conn.close()
                self._conn = None
                raise
            return
        conn = await psycopg.AsyncConnection.connect(self._target, autocommit=True)
        try:
            yield conn
        finally:
            await conn.close()

    # -- one round

    async def run_once(self, now: datetime | None = None) -> CronRound:
        """Fires every due schedule once (``now`` overrides the database clock) and returns what it did."""
        fires: list[CronFire] = []
        paused: list[tuple[str, str]] = []
        async with self._connection() as conn:
            async with conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(queries.CRON_TAKE_DUE, {"max_schedules": self.config.max_schedules, "now": now})
                rows = await cur.fetchall()
                db_now: datetime = rows[0]["db_now"] if rows else now or datetime.now(UTC)
                for row in rows:
                    error = await self._fire(conn, row, db_now, fires)
                    if error is not None:
                        await conn.execute(
                            queries.CRON_FAIL, {"name": row["name"], "error_message": error, "now": db_now}
                        )
                        log.error("cron schedule %s paused: %s", row["name"], error)
                        paused.append((row["name"], error))
            async with conn.transaction():
                wake = await (await conn.execute(queries.CRON_NEXT_WAKE, {"now": now})).fetchone()
        wake_at, wake_now = wake if wake is not None else (None, None)
        return CronRound(
            now=db_now if rows or wake_now is None else wake_now,
            taken=len(rows),
            fires=tuple(fires),
            paused=tuple(paused),
            next_wake_at=wake_at,
            wake_now=wake_now,
        )

    async def _fire(
        self, conn: psycopg.AsyncConnection[Any], row: dict[str, Any], now: datetime, fires: list[CronFire]
    ) -> str | None:
        """Plans and fires one taken schedule; returns the error that should pause it, or None."""
        name: str = row["name"]
        try:
            plan = plan_fires(
                row["expression"],
                row["timezone"],
                row["next_fire_at"],
                now,
                grace=self.config.grace,
                catch_up=row["catch_up"],
            )
            zone = schedule_zone(row["timezone"])
            params = [build_params(row["params_schema"], row["params"], f.astimezone(zone)) for f in plan.fire_times]
        except CronError as exc:
            return str(exc)
        try:
            async with conn.transaction():  # a savepoint: a refused fire leaves the others intact
                cur = await conn.execute(
                    queries.CRON_FIRE,
                    {
                        "name": name,
                        "expected_next_fire_at": row["next_fire_at"],
                        "fire_times": list(plan.fire_times),
                        "fire_params": json.dumps(params),
                        "next_fire_at": plan.next_fire_at,
                        "missed": plan.missed,
                        "now": now,
                    },
                )
                results = await cur.fetchall()
        except psycopg.Error as exc:
            if not _is_schedule_error(exc):
                raise
            return f"{exc.sqlstate}: {exc.diag.message_primary or exc}"
        for fire_at, outcome, task_id in results:
            fires.append(CronFire(name, fire_at, outcome, task_id))
            if outcome == "enqueued":
                log.debug("cron %s fired for %s: task %s", name, fire_at, task_id)
            elif outcome == "skipped":
                log.info(
                    "cron %s: fire at %s skipped, task %s of the previous fire is still live", name, fire_at, task_id
                )
        if plan.missed:
            log.warning("cron %s: %s fire times missed (all workers down or busy past them)", name, plan.missed)
        return None

    # -- the loop

    def _delay(self, result: CronRound) -> float:
        """Seconds to sleep after a round: until the earliest next fire time (on the database clock)."""
        cap = self.config.max_sleep.total_seconds()
        if result.next_wake_at is None or result.wake_now is None:
            return cap
        seconds = (result.next_wake_at - result.wake_now).total_seconds()
        if seconds <= 0:
            # due, yet this round took nothing: another worker holds it right now; look again shortly
            return 0.0 if result.taken else 0.05
        return min(seconds + 0.001, cap)

    async def _listen(self, poke: asyncio.Event) -> None:
        while True:
            try:
                async with self._listen_connection() as conn:
                    await conn.execute(queries.CRON_LISTEN)
                    poke.set()  # notifications may have been lost while disconnected: look now
                    async for _ in conn.notifies():
                        poke.set()
            except psycopg.Error as exc:
                log.warning("cron: LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(self.config.retry_delay.total_seconds())

    async def run(self, stop: asyncio.Event) -> None:
        """Runs rounds until ``stop`` is set, sleeping until the earliest next fire time between them."""
        poke = asyncio.Event()
        listener = asyncio.create_task(self._listen(poke)) if self.config.listen else None
        if isinstance(self._target, str):
            self._conn = None
        try:
            while not stop.is_set():
                poke.clear()
                try:
                    if isinstance(self._target, str) and (self._conn is None or self._conn.closed):
                        self._conn = await psycopg.AsyncConnection.connect(self._target, autocommit=True)
                    delay = self._delay(await self.run_once())
                except (psycopg.Error, OSError) as exc:
                    log.warning("cron: round failed (%s); retrying in %s", exc, self.config.retry_delay)
                    if self._conn is not None:
                        await self._conn.close()
                        self._conn = None
                    delay = self.config.retry_delay.total_seconds()
                await _wait_any(stop, poke, delay)
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


async def _wait_any(stop: asyncio.Event, poke: asyncio.Event, seconds: float) -> None:
    """Sleeps ``seconds`` or until ``stop`` or ``poke`` is set."""
    if seconds <= 0 or stop.is_set():
        return
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(poke.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def fire_date(fire_at: datetime, zone: str) -> date:
    """The calendar date of a fire time in the schedule's zone (what a ``format: date`` param gets)."""
    return fire_at.astimezone(schedule_zone(zone)).date()
