"""anchor-py through PgBouncer in transaction mode (tests/integrations/pgbouncer.py): the application path (enqueue,
enqueue inside the caller's transaction) and the worker's claim/complete path, with LISTEN on a direct connection.

Each connection through the pooler uses psycopg's ``prepare_threshold=None``: PgBouncer before 1.21 (Debian 12
ships 1.18) cannot carry server-side prepared statements across its server connections."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from examples.zgen import taskgen
from tests.integrations.otel import registered
from tests.integrations.pgbouncer import pgbouncer

EMAIL = taskgen.SendEmailParameters(user_id=1, template_id="welcome")


@pytest.fixture
def pooled(dsn: str) -> Iterator[str]:
    registered(dsn)
    with pgbouncer(dsn) as through_pgbouncer:
        yield through_pgbouncer


def states(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("select name, state from anchor.tasks order by id").fetchall()


def test_enqueue_through_transaction_pooling_many_times_on_a_pool(pooled: str, dsn: str) -> None:
    # more calls than psycopg's default prepare_threshold (5), on connections PgBouncer moves between servers
    with ConnectionPool(pooled, min_size=2, max_size=4, kwargs={"prepare_threshold": None, "autocommit": True}) as pool:
        runner = taskgen.TaskRunner(pool)
        ids = [runner.run_send_email(EMAIL) for _ in range(20)]
        ids += runner.run_send_email_many([EMAIL] * 5)
    assert len(set(ids)) == 25
    assert states(dsn) == [("SendEmail", "pending")] * 25


def test_enqueue_with_tx_commits_and_rolls_back_with_the_callers_transaction(pooled: str, dsn: str) -> None:
    with psycopg.connect(pooled, prepare_threshold=None) as conn:
        conn.execute("create table signups (email text primary key)")
        conn.commit()
        for round_ in range(8):
            with conn.transaction():
                conn.execute("insert into signups values (%s)", (f"user{round_}@example.com",))
                taskgen.TaskRunner(conn).run_send_email_with_tx(conn, EMAIL)
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute("insert into signups values ('gone@example.com')")
            taskgen.TaskRunner(conn).run_send_email_with_tx(conn, EMAIL)
            raise RuntimeError("rolled back")
        assert conn.execute("select count(*) from signups").fetchone() == (8,)
    assert states(dsn) == [("SendEmail", "pending")] * 8
