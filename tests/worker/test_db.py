"""anchor_py.db: autocommit connections from a pool of either mode or a DSN, a dedicated connection
built like the pool's, retrying through transient errors only, and the fetch helpers."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from anchor_py.db import (
    AsyncConnections,
    Backoff,
    execute,
    fetch_all,
    fetch_one,
    fetch_one_sync,
    fetch_value,
    fetch_value_sync,
    retrying,
)

Conn = psycopg.Connection[dict[str, Any]]


def test_a_non_autocommit_pool_hands_out_autocommit_connections_and_gets_them_back_as_they_were(
    dsn: str, db: Conn
) -> None:
    db.execute("create table notes (text text)")

    async def scenario() -> tuple[bool, bool]:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
            source = AsyncConnections(pool, application_name="unused")
            async with source.connection() as conn:
                during = conn.autocommit
                await execute(conn, "insert into notes values (%(text)s)", {"text": "committed"})
                # visible to others at once: the statement was its own transaction
                assert db.execute("select count(*) as n from notes").fetchone() == {"n": 1}
            async with pool.connection() as conn:
                return during, conn.autocommit

    assert asyncio.run(scenario()) == (True, False)


def test_a_dsn_source_opens_named_autocommit_connections(dsn: str, db: Conn) -> None:
    async def scenario() -> tuple[Any, ...] | None:
        source = AsyncConnections(dsn, application_name="anchor-probe")
        async with source.connection() as conn:
            assert conn.autocommit
            return await fetch_one(conn, "select current_setting('application_name'), 1 + 1")

    assert asyncio.run(scenario()) == ("anchor-probe", 2)


def test_a_dedicated_connection_uses_the_pools_settings_but_not_its_slots(dsn: str) -> None:
    async def scenario() -> tuple[str, int]:
        kwargs = {"application_name": "anchor-pool-settings"}
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, kwargs=kwargs, open=False) as pool:
            source = AsyncConnections(pool, application_name="unused")
            async with source.connection(), source.dedicated() as own:  # the only pool slot is taken
                name = await fetch_value(own, "select current_setting('application_name')")
                return name, pool.get_stats()["pool_size"]

    assert asyncio.run(scenario()) == ("anchor-pool-settings", 1)


def test_fetch_helpers_return_tuples_whatever_the_row_factory(dsn: str) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
            return (
                await fetch_one(conn, "select 1, 2"),
                await fetch_all(conn, "select g from generate_series(1, 3) g"),
                await fetch_value(conn, "select 'x' where false"),
            )

    assert asyncio.run(scenario()) == ((1, 2), [(1,), (2,), (3,)], None)


def test_sync_fetch_helpers_return_tuples_whatever_the_row_factory(db: Conn) -> None:
    assert fetch_one_sync(db, "select 1, %(two)s::int", {"two": 2}) == (1, 2)
    assert fetch_value_sync(db, "select 'x'") == "x"
    assert fetch_value_sync(db, "select 'x' where false") is None


def test_retrying_waits_out_transient_errors_and_lets_the_others_through() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return "done"

    async def broken() -> None:
        raise psycopg.errors.DivisionByZero("division by zero")

    quick = Backoff(first=timedelta(milliseconds=10), ceiling=timedelta(milliseconds=20))
    assert asyncio.run(retrying("probe", flaky, backoff=quick)) == "done" and calls == 3
    with pytest.raises(psycopg.errors.DivisionByZero):
        asyncio.run(retrying("probe", broken, backoff=quick))


def test_backoff_doubles_up_to_its_ceiling_and_resets() -> None:
    backoff = Backoff(first=timedelta(seconds=1), ceiling=timedelta(seconds=4))
    delays = [backoff.next_delay() for _ in range(5)]
    for delay, expected in zip(delays, (1, 2, 4, 4, 4), strict=True):
        assert expected * 0.9 <= delay <= expected
    backoff.reset()
    assert backoff.next_delay() <= 1
