"""The pruner service: one round deletes every finished task past retention in batches, one worker at
a time (a second pruner skips its round while the first holds the lock), and the loop survives a
database it cannot reach."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from anchor_py.pruner import Pruner, PrunerConfig, PruneRound, pruner_factory
from anchor_py.services import Service

Conn = psycopg.Connection[dict[str, Any]]


def finished_tasks(db: Conn, count: int, state: str = "succeeded", days_ago: float = 10) -> None:
    """`count` tasks that finished `days_ago` days ago, driven through the core's own functions."""
    db.execute("select anchor.register_tasks(%s::jsonb, 1)", (json.dumps([{"name": "Job"}]),))
    db.execute("select anchor.heartbeat_v2('w', '{}')")
    db.execute("select anchor.enqueue_many('Job', %s::jsonb)", (json.dumps([{}] * count),))
    rows = db.execute("select id, attempt from anchor.claim('w', %s) where kind = 'execute'", (count,)).fetchall()
    when = db.execute("select now() - %s * interval '1 day' as t", (days_ago,)).fetchone()["t"]  # type: ignore[index]
    ids, attempts = [r["id"] for r in rows], [r["attempt"] for r in rows]
    if state == "succeeded":
        db.execute("select anchor.complete(%s, %s, 'w', p_now => %s)", (ids, attempts, when))
    else:
        for task_id, attempt in zip(ids, attempts, strict=False):
            db.execute("select anchor.fail(%s, %s, 'w', fatal => true, p_now => %s)", (task_id, attempt, when))


def count(db: Conn) -> int:
    return int(db.execute("select count(*) as n from anchor.tasks").fetchone()["n"])  # type: ignore[index]


def test_a_round_deletes_everything_due_in_batches(db: Conn, dsn: str) -> None:
    finished_tasks(db, 25)
    finished_tasks(db, 3, days_ago=1)  # young: kept
    pruner = Pruner(dsn, PrunerConfig(batch_size=10))
    assert asyncio.run(pruner.run_once()) == PruneRound(deleted=25, batches=3)
    assert count(db) == 3
    assert asyncio.run(pruner.run_once()) == PruneRound(deleted=0, batches=1)


def test_failed_tasks_are_kept_longer_and_both_periods_are_configurable(db: Conn, dsn: str) -> None:
    finished_tasks(db, 2, state="failed", days_ago=10)
    assert asyncio.run(Pruner(dsn).run_once()).deleted == 0  # 30 days by default
    short = PrunerConfig(succeeded_after=timedelta(days=1), failed_after=timedelta(days=9))
    assert asyncio.run(Pruner(dsn, short).run_once()).deleted == 2


def test_now_can_be_injected(db: Conn, dsn: str) -> None:
    finished_tasks(db, 4, days_ago=1)
    pruner = Pruner(dsn)
    assert asyncio.run(pruner.run_once()).deleted == 0
    now = db.execute("select now() + interval '7 days' as t").fetchone()["t"]  # type: ignore[index]
    assert asyncio.run(pruner.run_once(now)).deleted == 4


def test_a_round_is_bounded_by_max_batches(db: Conn, dsn: str) -> None:
    finished_tasks(db, 30)
    pruner = Pruner(dsn, PrunerConfig(batch_size=5, max_batches=2))
    assert asyncio.run(pruner.run_once()) == PruneRound(deleted=10, batches=2)
    assert count(db) == 20


def test_only_one_pruner_works_at_a_time(db: Conn, dsn: str) -> None:
    finished_tasks(db, 5)
    with psycopg.connect(dsn, autocommit=True) as other:
        # another worker's pruner is in the middle of its round
        other.execute("select pg_advisory_lock(hashtext('anchor.prune'))")
        assert asyncio.run(Pruner(dsn).run_once()) == PruneRound(deleted=0, batches=0, skipped=True)
        assert count(db) == 5
    # that pruner's connection went away, and its lock with it
    assert asyncio.run(Pruner(dsn).run_once()).deleted == 5


def test_the_lock_is_released_after_a_round_on_a_pooled_connection(db: Conn, dsn: str) -> None:
    finished_tasks(db, 3)

    async def scenario() -> tuple[PruneRound, PruneRound]:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
            service = pruner_factory(PrunerConfig())(pool)
            assert isinstance(service, Service)
            first = await service.run_once()
            # the same single pooled connection again: a held lock would be re-entrant, so check from outside
            with psycopg.connect(dsn, autocommit=True) as other:
                row = other.execute("select pg_try_advisory_lock(hashtext('anchor.prune'))").fetchone()
                assert row == (True,)
                # unlock explicitly: a closed connection's backend may still hold it for a moment
                other.execute("select pg_advisory_unlock(hashtext('anchor.prune'))")
            return first, await service.run_once()

    first, second = asyncio.run(scenario())
    assert first.deleted == 3
    assert second == PruneRound(deleted=0, batches=1)


def test_run_loops_until_stopped_and_survives_an_unreachable_database(
    db: Conn, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    finished_tasks(db, 3)

    async def scenario(target: str) -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(Pruner(target, PrunerConfig(interval=timedelta(seconds=0.05))).run(stop))
        await asyncio.sleep(0.4)
        stop.set()
        await asyncio.wait_for(runner, 5)

    with caplog.at_level(logging.WARNING, logger="anchor_py.pruner"):
        asyncio.run(scenario("host=127.0.0.1 port=1 dbname=nowhere connect_timeout=1"))
    assert "prune round failed" in caplog.text
    asyncio.run(scenario(dsn))
    assert count(db) == 0


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="batch_size and max_batches must be at least 1"):
        PrunerConfig(batch_size=0)
    with pytest.raises(ValueError, match="must not be negative"):
        PrunerConfig(failed_after=timedelta(days=-1))


def test_a_task_that_cannot_be_deleted_does_not_stop_the_loop(
    db: Conn, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    finished_tasks(db, 3)
    # the application keeps a reference to one finished task (as the superuser, in its own table)
    db.execute("create table kept_reports (task_id bigint references anchor.tasks (id))")
    db.execute("insert into kept_reports select min(id) from anchor.tasks")

    async def scenario() -> None:
        stop = asyncio.Event()
        config = PrunerConfig(interval=timedelta(seconds=5), retry_delay=timedelta(seconds=0.05),
                              max_retry_delay=timedelta(seconds=0.1))
        runner = asyncio.create_task(Pruner(dsn, config).run(stop))
        await asyncio.sleep(0.5)
        assert not runner.done()
        stop.set()
        await asyncio.wait_for(runner, 5)

    with caplog.at_level(logging.WARNING, logger="anchor_py.pruner"):
        asyncio.run(scenario())
    failures = [r.getMessage() for r in caplog.records if "prune round failed" in r.getMessage()]
    assert len(failures) >= 2 and "23503" in failures[0] and "kept_reports" in failures[0], failures
    # the lock is not left behind: another pruner can take it
    with psycopg.connect(dsn, autocommit=True) as other:
        assert other.execute("select pg_try_advisory_lock(hashtext('anchor.prune'))").fetchone() == (True,)
