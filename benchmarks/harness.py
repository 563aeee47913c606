"""What every scenario shares: where the database is, scratch databases, results, timing helpers.

The scenarios import this module; it imports none of them (`python -m benchmarks`, in __main__.py, lists them).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from anchor_py.migrate import install

REPO = Path(__file__).resolve().parent.parent
LOCAL_SERVER = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@dataclass
class Result:
    """One measured figure set: printed as one JSON line, and one row of the final table."""

    scenario: str
    system: str
    variant: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        return json.dumps({"scenario": self.scenario, "system": self.system, "variant": self.variant, **self.metrics})


@dataclass
class Context:
    server: str  # a DSN of the server (any database on it)
    quick: bool
    peers: bool
    steady_seconds: float | None = None  # --steady-seconds: the steady scenario's duration per rate
    results: list[Result] = field(default_factory=list)
    out: Any = None

    def emit(self, scenario: str, system: str, variant: str, **metrics: Any) -> Result:
        result = Result(scenario, system, variant, metrics)
        self.results.append(result)
        print(result.as_json(), flush=True)
        if self.out is not None:
            self.out.write(result.as_json() + "\n")
            self.out.flush()
        return result

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def dsn(self, dbname: str) -> str:
        parts = conninfo_to_dict(self.server)
        parts["dbname"] = dbname
        return make_conninfo(**parts)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def scratch(self, name: str, *, migrate: bool = True) -> Iterator[str]:
        """A database of its own for one scenario, dropped afterwards (even when the scenario fails)."""
        dbname = f"anchor_bench_{name.replace('-', '_')}_{os.getpid()}"
        admin = self.dsn("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{dbname}" with (force)')
            conn.execute(f'create database "{dbname}"')
        dsn = self.dsn(dbname)
        try:
            if migrate:
                install(dsn)
            yield dsn
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{dbname}" with (force)')


def find_server(explicit: str | None) -> str:
    """--dsn, else $DATABASE_URL, else the server at 127.0.0.1:5432, else the embedded PostgreSQL."""
    if explicit:
        return explicit
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    try:
        with psycopg.connect(LOCAL_SERVER, connect_timeout=2):
            return LOCAL_SERVER
    except psycopg.OperationalError:
        pass
    from anchor_py.database import start_embedded

    return start_embedded()


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank, as the peers' scripts compute it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def timed_clients(dsn: str, clients: int, work: Callable[[psycopg.Connection[Any]], None]) -> float:
    """Runs ``work`` on ``clients`` threads, each with its own autocommit connection, all started at once;
    returns the seconds from the start until the last one finished (connecting is not timed)."""
    start = threading.Barrier(clients + 1)

    def client() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            start.wait()
            work(conn)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
