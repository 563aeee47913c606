"""Fault-test fixtures: a private PostgreSQL (never the machine's shared one: these tests restart and
break it), one fresh database per test cloned from a migrated template, and a log directory."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.faults.harness import prepare_database
from tests.faults.pgcluster import ThrowawayPostgres

TEMPLATE = "anchor_fault_template"
_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def fault_server() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(f"create database {TEMPLATE}")
        prepare_database(server.dsn(TEMPLATE))
        yield server
    finally:
        server.close()


@pytest.fixture
def fault_dsn(fault_server: ThrowawayPostgres) -> Iterator[str]:
    """A fresh database with the SQL core, the fault side tables and the fault TASKS registered."""
    name = f"fault_{next(_numbers)}"
    fault_server.wait_ready()
    with psycopg.connect(fault_server.dsn(), autocommit=True) as conn:
        conn.execute(f"create database {name} template {TEMPLATE}")
    try:
        yield fault_server.dsn(name)
    finally:
        fault_server.wait_ready()
        with psycopg.connect(fault_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path
