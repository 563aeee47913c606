"""The cron service: fires due cron schedules, once per fire time across all workers.

The schedules live in ``anchor.cron_schedules``, synced from the task definitions or created by the
application at run time (``anchor.cron_upsert``), and fire alike; their fire times are computed in Python
(``anchor_py.cron_times``). ``CronService`` is the maintenance service every worker
runs. One round (``run_once``) takes the due schedules ``FOR UPDATE SKIP LOCKED``, plans their fires,
enqueues them through ``anchor.cron_fire`` and advances the next fire times, all in one transaction;
between rounds it sleeps until the earliest next fire time (woken early by ``NOTIFY anchor_cron`` when a
schedule is added, changed or resumed).

A schedule that cannot fire (an expression, timezone or stored value that cannot be used, params the
task refuses) is paused with its error recorded, and the other schedules fire in the same round; only an
error that says the database is unwell fails the round, which the service loop then retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.rows import dict_row, tuple_row
from psycopg.types.datetime import TimestamptzLoader
from psycopg.types.string import TextLoader

from anchor_py import queries
from anchor_py.cron_times import CronError, build_params, plan_fires, schedule_zone
from anchor_py.db import PoolOrDsn, execute, fetch_all
from anchor_py.services import MaintenanceService, ServiceConfig, check_durations

__all__ = ["CronConfig", "CronFire", "CronRound", "CronService"]

@dataclass(frozen=True, kw_only=True)
class CronConfig(ServiceConfig):
    """How a CronService runs.

    - ``grace``: how late a fire may be and still count as on time (not missed).
    - ``max_sleep``: the longest sleep between rounds, so a lost notification or a schedule changed
      behind the service's back is noticed within it.
    - ``max_schedules``: schedules taken per transaction.
    - ``listen``: wake on ``NOTIFY anchor_cron`` (schedule added, changed, resumed).
    """

    grace: timedelta = timedelta(seconds=1)
    max_sleep: timedelta = timedelta(seconds=60)
    max_schedules: int = 100
    listen: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_durations(self, positive=("max_sleep",), non_negative=("grace",))
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


# SQLSTATE classes that say the database is unwell rather than the schedule: connection lost (08),
# serialization failure or deadlock (40), out of resources (53), lock not available (55), operator
# intervention such as a statement timeout or shutdown (57), system error (58). The round is retried.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})


def _is_schedule_error(exc: psycopg.Error) -> bool:
    """Whether a fire's error belongs to that schedule (our AT codes, bad data, a limit its params hit...),
    so that it pauses the schedule instead of failing the round for every schedule."""
    state = exc.sqlstate
    return state is not None and state[:2] not in _TRANSIENT_CLASSES


class OutOfRange(str):
    """A stored timestamp that Python's datetime cannot hold (±infinity, before year 1, after 9999)."""


class _TolerantTimestamptzLoader(Loader):
    """Loads timestamptz as datetime, or as OutOfRange text, so one stored value out of range does not
    make the whole result unreadable."""

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        self._loader = TimestamptzLoader(oid, context)

    def load(self, data: Buffer) -> datetime | OutOfRange:
        try:
            return self._loader.load(data)
        except psycopg.DataError:
            return OutOfRange(bytes(data).decode())


def _tolerant_cursor(conn: psycopg.AsyncConnection[Any], row_factory: Any) -> psycopg.AsyncCursor[Any]:
    """A cursor for reading schedules: jsonb comes as text (decoded per schedule, in ``_fire``) and
    timestamps out of range as OutOfRange, so one unusable row pauses itself instead of failing the read."""
    cur = conn.cursor(row_factory=row_factory)
    cur.adapters.register_loader("jsonb", TextLoader)
    cur.adapters.register_loader("timestamptz", _TolerantTimestamptzLoader)
    return cur


class CronService(MaintenanceService[CronConfig, CronRound]):
    """The cron maintenance service: fires due schedules, once per fire time across all workers."""

    name = "cron"
    log = logging.getLogger("anchor_py.cron")

    def __init__(self, pool_or_dsn: PoolOrDsn, config: CronConfig | None = None) -> None:
        super().__init__(pool_or_dsn, config or CronConfig())

    # -- one round

    async def run_once(self, now: datetime | None = None) -> CronRound:
        """Fires every due schedule once (``now`` overrides the database clock) and returns what it did."""
        fires: list[CronFire] = []
        paused: list[tuple[str, str]] = []
        async with self.db.connection() as conn:
            async with conn.transaction():
                cur = _tolerant_cursor(conn, dict_row)
                await cur.execute(queries.CRON_TAKE_DUE, {"max_schedules": self.config.max_schedules, "now": now})
                rows = await cur.fetchall()
                db_now: datetime = rows[0]["db_now"] if rows else now or datetime.now(UTC)
                for row in rows:
                    error = await self._fire(conn, row, db_now, fires)
                    if error is not None:
                        await execute(
                            conn, queries.CRON_FAIL, {"name": row["name"], "error_message": error, "now": db_now}
                        )
                        self.log.error("cron schedule %s paused: %s", row["name"], error)
                        paused.append((row["name"], error))
            cur = _tolerant_cursor(conn, tuple_row)
            wake = await (await cur.execute(queries.CRON_NEXT_WAKE, {"now": now})).fetchone()
        wake_at, wake_now = wake if wake is not None else (None, None)
        if isinstance(wake_at, OutOfRange):  # e.g. 'infinity': nothing to wake up for
            wake_at = None
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
        if isinstance(row["next_fire_at"], OutOfRange):
            return f"next fire time {row['next_fire_at']} is outside the years 1 to 9999 that fire times can have"
        try:
            # the stored JSON is decoded here, per schedule: one that cannot be decoded pauses only itself
            schema, stored_params = json.loads(row["params_schema"]), json.loads(row["params"])
            plan = plan_fires(
                row["expression"],
                row["timezone"],
                row["next_fire_at"],
                now,
                grace=self.config.grace,
                catch_up=row["catch_up"],
            )
            zone = schedule_zone(row["timezone"])
            params = [build_params(schema, stored_params, f.astimezone(zone)) for f in plan.fire_times]
        except CronError as exc:
            return str(exc)
        except Exception as exc:  # a stored value no check foresaw: it stops this schedule, not the service
            return f"the stored schedule cannot be used: {type(exc).__name__}: {exc}"
        try:
            async with conn.transaction():  # a savepoint: a refused fire leaves the others intact
                results = await fetch_all(
                    conn,
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
        except psycopg.Error as exc:
            if not _is_schedule_error(exc):
                raise
            return f"{exc.sqlstate}: {exc.diag.message_primary or exc}"
        for fire_at, outcome, task_id in results:
            fires.append(CronFire(name, fire_at, outcome, task_id))
            if outcome == "enqueued":
                self.log.debug("cron %s fired for %s: task %s", name, fire_at, task_id)
            elif outcome == "skipped":
                self.log.info(
                    "cron %s: fire at %s skipped, task %s of the previous fire is still live", name, fire_at, task_id
                )
        if plan.missed:
            self.log.warning("cron %s: %s fire times missed (all workers down or busy past them)", name, plan.missed)
        return None

    # -- the loop

    def next_delay(self, result: CronRound) -> timedelta:
        """Until the earliest next fire time (on the database clock), at most ``max_sleep``."""
        cap = self.config.max_sleep
        if result.next_wake_at is None or result.wake_now is None:
            return cap
        until = result.next_wake_at - result.wake_now
        if until <= timedelta(0):
            # due, yet this round took nothing: another worker holds it right now; look again shortly
            return timedelta(0) if result.taken else timedelta(seconds=0.05)
        return min(until + timedelta(milliseconds=1), cap)

    async def _listen(self) -> None:
        """Wakes the loop on ``NOTIFY anchor_cron`` (a schedule added, changed or resumed)."""
        while True:
            try:
                async with self.db.dedicated() as conn:
                    await conn.execute(queries.CRON_LISTEN)
                    self.wake()  # notifications may have been lost while disconnected: look now
                    async for _ in conn.notifies():
                        self.wake()
            except (psycopg.Error, OSError) as exc:
                self.log.warning("cron: LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(self.config.retry_delay.total_seconds())

    async def run(self, stop: asyncio.Event) -> None:
        """Runs rounds until ``stop`` is set, sleeping until the earliest next fire time between them."""
        listener = asyncio.create_task(self._listen()) if self.config.listen else None
        try:
            await super().run(stop)
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
