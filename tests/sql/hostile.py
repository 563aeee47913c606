"""Helpers for the hostile-input tests: a connection acting as one of the anchor roles (SET ROLE, as an
application or worker login would after connecting) and the SQLSTATE of a refused call."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.sql.factories import Conn


@contextmanager
def as_role(dsn: str, role: str) -> Iterator[Conn]:
    """An autocommit connection whose every statement runs as `role` (anchor.ensure_roles() must have run)."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(f"set role {role}")
        yield conn


def sqlstate_of(call: Callable[[], Any]) -> tuple[str | None, str]:
    """The SQLSTATE and message `call` raised, or (None, '') when it succeeded."""
    try:
        call()
    except psycopg.Error as exc:
        return exc.sqlstate, str(exc)
    return None, ""


def one(conn: Conn, sql: str, params: Any = None) -> Any:
    """The single value of a one-row, one-column query."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return next(iter(row.values()))
