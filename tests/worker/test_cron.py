"""CronService against a real PostgreSQL: several instances firing one schedule once per fire time, pause
and resume across instances, expression changes, missed fires after an outage, fire-time params, and
schedules that fail at run time. Clock-dependent logic is tested with run_once(now=...), not by waiting;
the multi-instance tests run in real time because that is what they are about."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pydantic
import pytest

from anchor_py.cli import main as anchor_main
from anchor_py.cron import CronConfig, CronService
from anchor_py.taskcore import TaskContext
from anchor_py.taskspec import TaskSet, TaskSpec
from anchor_py.worker import Worker, WorkerConfig

Conn = psycopg.Connection[dict[str, Any]]
UTC = UTC

REPORTS = {
    "name": "ProcessDailyReports",
    "description": "生成每日报告",
    "parameters": {
        "type": "object",
        "required": ["date"],
        "properties": {"date": {"type": "string", "format": "date"}},
    },
    "retry_interval": "1h",
    "max_attempts": -1,
    "cron": {"expression": "0 0 1 * * *"},
}


def tick(name: str = "Tick", expression: str = "* * * * * *", **cron: Any) -> dict[str, Any]:
    # nobody consumes these tasks here, so overlap "allow": with "skip" the first pending task would
    # (rightly) block every later fire
    return {
        "name": name,
        "parameters": {"type": "object"},
        "cron": {"expression": expression, "overlap": "allow", **cron},
    }


def register(db: Conn, *definitions: dict[str, Any], version: int = 1) -> None:
    db.execute("select anchor.register_tasks(%s::jsonb, %s)", (json.dumps(list(definitions)), version))


def tasks(db: Conn, name: str = "Tick") -> list[dict[str, Any]]:
    return db.execute("select * from anchor.tasks where name = %s order by scheduled_at, id", (name,)).fetchall()


def schedule(db: Conn, name: str = "Tick") -> dict[str, Any]:
    row = db.execute("select * from anchor.cron_schedules where name = %s", (name,)).fetchone()
    assert row is not None
    return row


def db_now(db: Conn) -> datetime:
    row = db.execute("select now() as now").fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Runs an async test body in its own event loop (pytest sees the original signature's fixtures)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


FAST = CronConfig(max_sleep=timedelta(seconds=30), retry_delay=timedelta(seconds=0.5))


@contextlib.asynccontextmanager
async def instances(dsn: str, count: int, config: CronConfig = FAST) -> AsyncIterator[list[CronService]]:
    """`count` CronServices running as separate loops (separate connections), stopped on exit."""
    stop = asyncio.Event()
    services = [CronService(dsn, config) for _ in range(count)]
    loops = [asyncio.create_task(service.run(stop)) for service in services]
    try:
        yield services
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), 10)


async def eventually(check: Any, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.1)


def whole_seconds(values: list[datetime]) -> bool:
    return all(v.microsecond == 0 for v in values)


# --- several instances, one schedule ---------------------------------------------------------------------


@sync
async def test_every_second_with_three_instances_for_ten_seconds(dsn: str, db: Conn) -> None:
    register(db, tick())
    async with instances(dsn, 3):
        await asyncio.sleep(10)
    fired = [t["scheduled_at"] for t in tasks(db)]
    assert 9 <= len(fired) <= 11, fired
    assert len(set(fired)) == len(fired), "no fire time twice"
    assert whole_seconds(fired)
    assert all(b - a == timedelta(seconds=1) for a, b in zip(fired, fired[1:], strict=False)), "no fire time skipped"
    # on time: each task was enqueued within the grace of its fire time
    assert all(timedelta(0) <= t["created_at"] - t["scheduled_at"] <= timedelta(seconds=1) for t in tasks(db))


@sync
async def test_pause_and_resume_across_instances(dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]) -> None:
    register(db, tick())
    async with instances(dsn, 2):
        await eventually(lambda: len(tasks(db)) >= 2, 5)
        # paused from outside the instances (the CLI, as an operator would)
        assert anchor_main(["cron", "pause", "Tick", "--dsn", dsn]) == 0
        await asyncio.sleep(0.3)  # a round that took the schedule before the pause may still commit
        paused_count = len(tasks(db))
        await asyncio.sleep(2.5)
        assert len(tasks(db)) == paused_count, "no instance fires a paused schedule"
        assert anchor_main(["cron", "list", "--dsn", dsn]) == 0
        assert anchor_main(["cron", "resume", "Tick", "--dsn", dsn]) == 0
        await eventually(lambda: len(tasks(db)) >= paused_count + 2, 4)
    out = capsys.readouterr().out
    assert "cron schedule Tick paused" in out and "cron schedule Tick resumed" in out
    listing = [line for line in out.splitlines() if line.startswith("Tick ")]
    assert listing and " yes" in listing[0]
    fired = [t["scheduled_at"] for t in tasks(db)]
    assert len(set(fired)) == len(fired)
    # resumed from "now": the paused stretch was not caught up
    gaps = [b - a for a, b in zip(fired, fired[1:], strict=False)]
    assert max(gaps) >= timedelta(seconds=2)
    assert all(t["created_at"] - t["scheduled_at"] <= timedelta(seconds=1) for t in tasks(db))


@sync
async def test_expression_change_is_picked_up_by_sleeping_instances(dsn: str, db: Conn) -> None:
    register(db, tick(expression="0 0 2 * * *"), version=1)
    async with instances(dsn, 2):
        await asyncio.sleep(1.5)
        assert tasks(db) == [] or all(t["scheduled_at"].hour == 2 for t in tasks(db))
        before = len(tasks(db))
        # a new deploy registers the changed YAML; the instances sleep until tomorrow 02:00 (capped at
        # max_sleep 30 s) and learn of the change by notification
        register(db, tick(expression="* * * * * *"), version=2)
        await eventually(lambda: len(tasks(db)) >= before + 2, 4)
        register(db, tick(expression="0 0 2 * * *"), version=3)
        await asyncio.sleep(0.5)
        settled = len(tasks(db))
        await asyncio.sleep(2)
        assert len(tasks(db)) == settled, "the daily expression is back in force"
    assert schedule(db)["expression"] == "0 0 2 * * *"


@sync
async def test_restart_after_five_seconds_down_catches_up_one_by_default_n_with_catch_up(dsn: str, db: Conn) -> None:
    register(db, tick("Tick"), tick("TickN", catch_up=3))
    async with instances(dsn, 2):
        await eventually(lambda: len(tasks(db, "Tick")) >= 2 and len(tasks(db, "TickN")) >= 2, 5)
    before = {name: len(tasks(db, name)) for name in ("Tick", "TickN")}
    await asyncio.sleep(5)  # every instance down
    async with instances(dsn, 2):
        await asyncio.sleep(2)
    for name, catch_up in (("Tick", 1), ("TickN", 3)):
        rows = tasks(db, name)
        fired = [t["scheduled_at"] for t in rows]
        assert len(set(fired)) == len(fired)
        late = [t for t in rows if t["created_at"] - t["scheduled_at"] > timedelta(seconds=1)]
        assert len(late) == catch_up, (name, [(t["scheduled_at"], t["created_at"]) for t in rows])
        after = rows[before[name] :]
        # the caught-up fires are the latest missed ones, oldest first, right before the on-time fires
        assert after[:catch_up] == late
        assert all(
            b - a == timedelta(seconds=1)
            for a, b in zip(fired[before[name] :], fired[before[name] + 1 :], strict=False)
        )
        # the rest of the outage was dropped, and counted
        assert fired[before[name]] - fired[before[name] - 1] > timedelta(seconds=1)
        assert schedule(db, name)["missed_count"] >= 1


@sync
async def test_the_loop_sleeps_until_the_next_fire_time(dsn: str, db: Conn) -> None:
    register(db, tick(expression="0 0 2 * * *"))
    rounds = 0

    class Counting(CronService):
        async def run_once(self, now: datetime | None = None) -> Any:
            nonlocal rounds
            rounds += 1
            return await super().run_once(now)

    stop = asyncio.Event()
    loop = asyncio.create_task(Counting(dsn, FAST).run(stop))
    await asyncio.sleep(4)
    stop.set()
    await asyncio.wait_for(loop, 5)
    # the first round computes the next fire time; a wake-up after LISTEN connects may add one more;
    # a once-a-second poll would have made at least 4
    assert 1 <= rounds <= 2


# --- the injectable clock ------------------------------------------------------------------------------


def at(*parts: int, micro: int = 0) -> datetime:
    return datetime(*parts, tzinfo=UTC).replace(microsecond=micro)  # type: ignore[misc]


@sync
async def test_process_daily_reports_gets_the_fire_date(dsn: str, db: Conn) -> None:
    register(db, REPORTS)
    service = CronService(dsn)
    first = await service.run_once(now=at(2024, 5, 1, 0, 30))
    assert first.fires == () and first.next_wake_at == at(2024, 5, 1, 1)
    assert (await service.run_once(now=at(2024, 5, 1, 0, 59, 59))).fires == ()
    fired = await service.run_once(now=at(2024, 5, 1, 1, 0, 0, micro=300_000))
    [fire] = fired.enqueued
    assert fire.fire_at == at(2024, 5, 1, 1)
    [task] = tasks(db, "ProcessDailyReports")
    assert task["id"] == fire.task_id
    assert task["params"] == {"date": "2024-05-01"}
    assert task["scheduled_at"] == at(2024, 5, 1, 1)
    assert task["retry_intervals"] == [timedelta(hours=1)] and task["max_attempts"] == -1
    assert fired.next_wake_at == at(2024, 5, 2, 1)


@sync
async def test_daily_report_after_three_days_down_gets_the_latest_date(dsn: str, db: Conn) -> None:
    register(db, REPORTS)
    service = CronService(dsn)
    await service.run_once(now=at(2024, 5, 1, 0, 30))
    await service.run_once(now=at(2024, 5, 1, 1, 0, 0))
    db.execute("update anchor.tasks set state = 'cancelled'")  # the first report is done with
    result = await service.run_once(now=at(2024, 5, 4, 12, 0, 0))
    assert [f.fire_at for f in result.enqueued] == [at(2024, 5, 4, 1)]
    assert [t["params"]["date"] for t in tasks(db, "ProcessDailyReports")] == ["2024-05-01", "2024-05-04"]
    assert schedule(db, "ProcessDailyReports")["missed_count"] == 2


@sync
async def test_fire_date_is_the_schedules_local_date(dsn: str, db: Conn) -> None:
    register(db, {**REPORTS, "cron": {"expression": "0 0 1 * * *", "timezone": "Asia/Shanghai"}})
    service = CronService(dsn)
    await service.run_once(now=at(2024, 4, 30, 12))
    result = await service.run_once(now=at(2024, 4, 30, 17, 0, 0))  # 01:00 on 1 May in Shanghai
    [fire] = result.enqueued
    assert fire.fire_at == at(2024, 4, 30, 17)
    assert tasks(db, "ProcessDailyReports")[0]["params"] == {"date": "2024-05-01"}


@sync
async def test_overlap_skip_by_default_with_a_live_previous_task(dsn: str, db: Conn) -> None:
    register(db, REPORTS)  # overlap not given: skip
    service = CronService(dsn)
    await service.run_once(now=at(2024, 5, 1, 0, 30))
    await service.run_once(now=at(2024, 5, 1, 1))
    result = await service.run_once(now=at(2024, 5, 2, 1))  # the first report is still pending (retrying)
    assert [f.outcome for f in result.fires] == ["skipped"]
    assert len(tasks(db, "ProcessDailyReports")) == 1
    assert schedule(db, "ProcessDailyReports")["skipped_count"] == 1


@sync
async def test_catch_up_with_the_injected_clock(dsn: str, db: Conn) -> None:
    register(db, tick(catch_up=3))
    service = CronService(dsn)
    await service.run_once(now=at(2024, 5, 1, 12, 0, 0, micro=500_000))
    result = await service.run_once(now=at(2024, 5, 1, 12, 0, 10, micro=500_000))
    assert [f.fire_at.second for f in result.enqueued if f.fire_at] == [7, 8, 9, 10]
    assert schedule(db)["missed_count"] == 6


# --- failures at run time --------------------------------------------------------------------------------


@sync
async def test_schedules_that_fail_at_run_time_are_paused_and_the_rest_fire(dsn: str, db: Conn) -> None:
    register(
        db,
        tick("Tick"),
        # the guide's TaskName example: required params neither given nor fillable
        {
            "name": "TaskName",
            "parameters": {
                "type": "object",
                "required": ["param1", "param2"],
                "properties": {"param1": {"type": "string"}, "param2": {"type": "integer", "format": "int32"}},
            },
            "cron": {"expression": "* * * * * *"},
        },
        # what generate would refuse, registered by hand
        tick("BadExpression", expression="every day at noon"),
        tick("BadZone", timezone="Mars/Olympus"),
        # given params that break the schema: refused by the SQL validator (AT002)
        {
            "name": "BadParams",
            "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "cron": {"expression": "* * * * * *", "parameters": {"n": "three"}},
        },
    )
    service = CronService(dsn)
    first = await service.run_once(now=at(2024, 5, 1, 12, 0, 0, micro=500_000))
    second = await service.run_once(now=at(2024, 5, 1, 12, 0, 1, micro=500_000))
    paused = dict(first.paused + second.paused)
    assert set(paused) == {"TaskName", "BadExpression", "BadZone", "BadParams"}
    assert "param1, param2" in paused["TaskName"]
    assert "every day at noon" in paused["BadExpression"]
    assert "Mars/Olympus" in paused["BadZone"]
    assert "AT002" in paused["BadParams"] and "$.n" in paused["BadParams"]
    for name, error in paused.items():
        row = schedule(db, name)
        assert row["paused"] and row["last_error"] == error
    assert tasks(db, "TaskName") == [] and tasks(db, "BadParams") == []
    assert [f.fire_at for f in second.enqueued] == [at(2024, 5, 1, 12, 0, 1)], "the healthy schedule fired"
    # the service keeps going: the next round is quiet about the paused ones and fires Tick again
    third = await service.run_once(now=at(2024, 5, 1, 12, 0, 2, micro=100_000))
    assert third.paused == () and [f.name for f in third.enqueued] == ["Tick"]


@sync
async def test_run_survives_a_database_outage(dsn: str, db: Conn) -> None:
    register(db, tick())
    stop = asyncio.Event()
    service = CronService(dsn, FAST)
    loop = asyncio.create_task(service.run(stop))
    await eventually(lambda: len(tasks(db)) >= 1, 4)
    db.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity"
        " where datname = current_database() and pid <> pg_backend_pid()"
    )
    count = len(tasks(db))
    await eventually(lambda: len(tasks(db)) >= count + 2, 6)
    assert not loop.done()
    stop.set()
    await asyncio.wait_for(loop, 5)
    fired = [t["scheduled_at"] for t in tasks(db)]
    assert len(set(fired)) == len(fired)


# --- end to end with workers ------------------------------------------------------------------------------


class NoParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)


class TickExecutor:
    def __init__(self) -> None:
        self.seen: list[tuple[int, datetime | None]] = []

    async def execute_tick(self, ctx: TaskContext, params: NoParams) -> None:
        self.seen.append((ctx.task_id, ctx.scheduled_at))


CRON_TASKS = TaskSet(
    [
        TaskSpec(
            name="Tick",
            description="every second",
            params_model=NoParams,
            execute_method="execute_tick",
            hook_method=None,
            # default overlap (skip): the workers finish each task long before the next second
            definition={"name": "Tick", "parameters": {"type": "object"}, "cron": {"expression": "* * * * * *"}},
        )
    ]
)


@sync
async def test_three_workers_run_an_every_second_schedule_once_per_fire_time(dsn: str, db: Conn) -> None:
    config = WorkerConfig(poll_interval=timedelta(seconds=0.5), heartbeat_interval=timedelta(seconds=0.5),
                          heartbeat_timeout=timedelta(seconds=3), concurrency=2)
    executors = [TickExecutor() for _ in range(3)]
    workers = [Worker(dsn, executor, CRON_TASKS, config) for executor in executors]
    runs = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        await asyncio.sleep(10)
    finally:
        for worker in workers:
            await worker.stop()
        await asyncio.wait_for(asyncio.gather(*runs), 15)
    rows = tasks(db)
    fired = [t["scheduled_at"] for t in rows]
    assert 9 <= len(fired) <= 11, fired
    assert len(set(fired)) == len(fired)
    seen = [entry for executor in executors for entry in executor.seen]
    assert len(seen) >= len(fired) - 1  # the last fire may still be pending at shutdown
    by_id = {t["id"]: t["scheduled_at"] for t in rows}
    assert all(scheduled == by_id[task_id] for task_id, scheduled in seen), "ctx.scheduled_at is the fire time"
    assert all(t["state"] in ("succeeded", "pending") for t in rows)
