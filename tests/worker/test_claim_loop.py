"""The claim loop with a backlog: the next claim goes to the database while the previous one is still there."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import psycopg

from tests.worker.conftest import FAST, enqueue, running_worker

Db = psycopg.Connection[dict[str, Any]]

# every update statement on the tasks takes 50 ms more: a claim stays in the database long enough to be seen
SLOW_UPDATES = """
create function slow_update() returns trigger language plpgsql as $$
begin
    perform pg_sleep(0.05);
    return null;
end;
$$;
create trigger slow_update after update on anchor.tasks for each statement execute function slow_update();
"""

# the worker's claims in the database right now (CLAIM and COMPLETE_AND_CLAIM both call claim_v2)
CLAIMS_NOW = """
select count(*) as n from pg_stat_activity
where datname = current_database() and state = 'active' and query like '%%anchor.claim_v2(%%'
    and pid <> pg_backend_pid()
"""


def test_with_a_backlog_the_next_claim_is_sent_while_the_previous_one_is_in_the_database(dsn: str, app_db: Db) -> None:
    app_db.execute(SLOW_UPDATES)
    ids = [enqueue(app_db, "Work", {"userId": i}) for i in range(300)]
    seen: list[int] = []

    def all_succeeded() -> bool:
        row = app_db.execute("select count(*) as n from anchor.tasks where state = 'succeeded'").fetchone()
        return row is not None and row["n"] == len(ids)

    async def scenario() -> None:
        async with running_worker(dsn, dataclasses.replace(FAST, concurrency=20)):
            for _ in range(6000):
                row = app_db.execute(CLAIMS_NOW).fetchone()
                seen.append(row["n"] if row else 0)
                if all_succeeded():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("the worker did not run the 300 tasks within 60 s")

    asyncio.run(scenario())
    assert max(seen) == 2, f"claims of the worker seen in the database at once: {sorted(set(seen))}"


def test_an_idle_worker_claims_on_its_poll_not_in_a_loop(dsn: str, app_db: Db) -> None:
    """A claim that comes back with nothing is not a reason to claim again: an idle worker (poll 0.5 s,
    heartbeat and rescue every 0.5 s) commits a few transactions a second, not hundreds."""

    def commits() -> int:
        app_db.execute("select pg_stat_clear_snapshot()")
        row = app_db.execute(
            "select xact_commit as n from pg_stat_database where datname = current_database()"
        ).fetchone()
        return int(row["n"]) if row else 0

    async def scenario() -> int:
        async with running_worker(dsn):
            await asyncio.sleep(1.5)  # started and settled
            before = commits()
            await asyncio.sleep(3.0)
            await asyncio.sleep(1.0)  # backends report their counters within a second
            return commits() - before

    assert asyncio.run(scenario()) < 100
