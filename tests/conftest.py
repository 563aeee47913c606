"""Fixtures for every test that talks to PostgreSQL: a real server, one fresh database per test, cloned
from a template that already holds the migrations (see tests/pgserver.py for which server)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from pytest_postgresql import factories

from anchor_py.database import process_running
from anchor_py.migrate import install
from tests.pgserver import Server, find_server

SERVER: Server = find_server()
# One name per pytest process, so several test sessions can share a server at once.
TEST_DB = f"anchor_test_{os.getpid()}"


def _drop_leftovers_of_dead_sessions() -> None:
    """A killed session leaves its template and test database behind; drop those whose process is gone."""
    with psycopg.connect(SERVER.dsn("postgres"), autocommit=True) as conn:
        for (name,) in conn.execute("select datname from pg_database where datname like 'anchor_test_%'").fetchall():
            match = re.fullmatch(r"anchor_test_(\d+)(_tmpl)?", name)
            if match is None or process_running(int(match[1])):
                continue
            if match[2]:
                conn.execute(f'alter database "{name}" with is_template false')
            conn.execute(f'drop database if exists "{name}" with (force)')


_drop_leftovers_of_dead_sessions()


def _install_migrations(dbname: str, **_connection: Any) -> None:
    install(SERVER.dsn(dbname))


anchor_pg = factories.postgresql_noproc(
    host=SERVER.host,
    port=SERVER.port,
    user=SERVER.user,
    password=SERVER.password,
    dbname=TEST_DB,
    load=[_install_migrations],
)
_fresh_database = factories.postgresql("anchor_pg")


def pytest_report_header() -> str:
    # the version too: `make test-pg14` shows in its header that it ran on 14
    with psycopg.connect(SERVER.dsn("postgres")) as conn:
        version = conn.execute("show server_version").fetchone()
    return f"PostgreSQL {version[0] if version else '?'}: {SERVER.origin} ({SERVER.host}:{SERVER.port})"


@pytest.fixture
def dsn(_fresh_database: psycopg.Connection[Any]) -> str:
    """The DSN of this test's own freshly migrated database."""
    return SERVER.dsn(_fresh_database.info.dbname)


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection to this test's database; rows come back as dicts."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        yield conn
