"""Fixtures for every test that talks to PostgreSQL: a real server, one fresh database per test, cloned
from a template that already holds the migrations (see tests/pgserver.py for which server)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from pytest_postgresql import factories

from anchor_py.migrate import install
from tests.pgserver import Server, find_server

SERVER: Server = find_server()
TEST_DB = "anchor_test"


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
    return f"PostgreSQL: {SERVER.origin} ({SERVER.host}:{SERVER.port})"


@pytest.fixture
def dsn(_fresh_database: psycopg.Connection[Any]) -> str:
    """The DSN of this test's own freshly migrated database."""
    return SERVER.dsn(_fresh_database.info.dbname)


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection to this test's database; rows come back as dicts."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        yield conn
