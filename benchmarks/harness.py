"""The harness: where the database is, scratch databases, results, the table and the target check.

    python -m benchmarks [--peers] [--only drain,latency] [--quick] [--dsn DSN] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
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


def scenarios() -> dict[str, Callable[[Context], None]]:
    from benchmarks import backlog, drain, enqueue, floor, latency, peers, retention

    return {
        "floor": floor.run,
        "enqueue-single": enqueue.run_single,
        "enqueue-batch": enqueue.run_batch,
        "drain": drain.run,
        "latency": latency.run,
        "backlog": backlog.run,
        "retention": retention.run,
        "peers": peers.run,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", action="store_true",
                        help="also run procrastinate and pgqueuer (in their own venv, .venv-peers)")
    parser.add_argument("--only", help="comma-separated scenarios: " + ", ".join(scenarios()))
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--dsn", help="server to use (default: $DATABASE_URL, 127.0.0.1:5432, else embedded)")
    parser.add_argument("--out", help="also append the JSON lines to this file (default: bench-results/<time>.jsonl)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    available = scenarios()
    chosen = [s for s in available if s != "peers" or args.peers]
    if args.only:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in available]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(available)}", file=sys.stderr)
            return 2
    out_path = Path(args.out) if args.out else REPO / "bench-results" / time.strftime("bench-%Y%m%d-%H%M%S.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ctx = Context(server=find_server(args.dsn), quick=args.quick, peers=args.peers)
    started = time.monotonic()
    print(f"# server: {conninfo_to_dict(ctx.server).get('host')}:{conninfo_to_dict(ctx.server).get('port')}, "
          f"load: {os.getloadavg()[0]:.2f}, scenarios: {', '.join(chosen)}", file=sys.stderr, flush=True)
    failed: list[str] = []
    with out_path.open("a", encoding="utf-8") as out:
        ctx.out = out
        for name in chosen:
            t = time.monotonic()
            print(f"# {name} ...", file=sys.stderr, flush=True)
            try:
                available[name](ctx)
            except Exception as exc:  # one broken scenario must not hide the others' numbers
                failed.append(name)
                print(f"# {name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            print(f"# {name} took {time.monotonic() - t:.0f}s", file=sys.stderr, flush=True)
    from benchmarks.report import print_report

    print_report(ctx.results, elapsed=time.monotonic() - started, load=os.getloadavg())
    print(f"# results appended to {out_path}", file=sys.stderr)
    return 1 if failed else 0
