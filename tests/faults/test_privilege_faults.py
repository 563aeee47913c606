"""Limits that must hold against the roles they are meant to limit (on the private server, since it
creates roles, which are cluster-wide).

Invariant: the oversized-params limit (anchor.max_params_bytes, 1 MiB by default) protects the queue from
the application role: a session logged in as anchor_enqueuer cannot enqueue params over the limit, even
after changing settings in its own session.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from anchor_py.migrate import install
from tests.faults.pgcluster import ThrowawayPostgres

BLOB = [{"name": "Blob", "parameters": {"type": "object", "properties": {"data": {"type": "string"}}}}]


@pytest.fixture
def enqueuer_dsn(fault_server: ThrowawayPostgres) -> Iterator[str]:
    name = "privileges"
    with psycopg.connect(fault_server.dsn(), autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name}")
    dsn = fault_server.dsn(name)
    install(dsn, roles=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("do $$ begin if not exists (select 1 from pg_roles where rolname = 'fault_app') then "
                     "create role fault_app login; end if; end $$")
        conn.execute("grant anchor_enqueuer to fault_app")
        conn.execute("select anchor.register_tasks(%s::jsonb, 1)", (json.dumps(BLOB),))
    try:
        yield make_conninfo(**{**conninfo_to_dict(dsn), "user": "fault_app"})
    finally:
        with psycopg.connect(fault_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


def test_enqueuer_cannot_lift_the_params_limit(enqueuer_dsn: str) -> None:
    """Invariant: 2 MiB of params are refused for anchor_enqueuer, also after it runs
    `set anchor.max_params_bytes = 100000000` in its session."""
    big = json.dumps({"data": "x" * (2 * 1024 * 1024)})
    with psycopg.connect(enqueuer_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="over the limit"):
            conn.execute("select anchor.enqueue('Blob', %s::jsonb)", (big,))
        conn.execute("set anchor.max_params_bytes = 100000000")
        with pytest.raises(psycopg.Error, match="over the limit"):
            conn.execute("select anchor.enqueue('Blob', %s::jsonb)", (big,))
