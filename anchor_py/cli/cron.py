"""`anchor cron list|pause NAME|resume NAME`: inspect and steer the cron schedules stored in the database."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from anchor_py import queries
from anchor_py.cli.common import UsageError, add_dsn_option, dsn_from

_NO_SCHEDULE = "AT007"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cron",
        help="list, pause and resume cron schedules",
        description="Cron schedules come from task definitions with a cronjob (anchor register).",
    )
    actions = parser.add_subparsers(dest="cron_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="every schedule: expression, next fire, last fire, paused, error")
    listing.add_argument("--json", action="store_true", help="print one JSON object per schedule")
    add_dsn_option(listing)
    listing.set_defaults(handler=run_list)

    for action, helptext in (
        ("pause", "stop a schedule from firing (fire times while paused are not caught up)"),
        ("resume", "let a paused schedule fire again, from the next fire time after now"),
    ):
        sub = actions.add_parser(action, help=helptext)
        sub.add_argument("name", metavar="NAME", help="the task name of the schedule")
        add_dsn_option(sub)
        sub.set_defaults(handler=run_pause if action == "pause" else run_resume)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def run_list(args: argparse.Namespace) -> int:
    with psycopg.connect(dsn_from(args), autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(queries.CRON_LIST).fetchall()
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str, sort_keys=True))
        return 0
    if not rows:
        print("anchor: no cron schedules (register task definitions with a cronjob first)")
        return 0
    header = ("NAME", "EXPRESSION", "TIMEZONE", "NEXT FIRE", "LAST FIRE", "PAUSED", "ERROR")
    table = [header] + [
        (
            row["name"],
            row["expression"],
            row["timezone"],
            "-" if row["paused"] else _when(row["next_fire_at"]),
            _when(row["last_fired_at"]),
            "yes" if row["paused"] else "no",
            row["last_error"] or "",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        cells = "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True))
        print(f"{cells}  {line[-1]}".rstrip())
    return 0


def _act(args: argparse.Namespace, statement: str, done: str) -> int:
    try:
        with psycopg.connect(dsn_from(args), autocommit=True) as conn:
            conn.execute(statement, {"name": args.name})
    except psycopg.Error as exc:
        if exc.sqlstate == _NO_SCHEDULE:
            raise UsageError(f"no cron schedule named {args.name!r} (see anchor cron list)") from exc
        raise
    print(f"anchor: cron schedule {args.name} {done}")
    return 0


def run_pause(args: argparse.Namespace) -> int:
    return _act(args, queries.CRON_PAUSE, "paused")


def run_resume(args: argparse.Namespace) -> int:
    return _act(args, queries.CRON_RESUME, "resumed")
