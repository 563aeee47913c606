"""`anchor cron list|pause NAME|resume NAME`: inspect and steer the cron schedules stored in the database
(through anchor_py.admin, as the dashboard does)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import psycopg

from anchor_py import admin
from anchor_py.cli.common import UsageError, add_command_group, add_dsn_option, connect
from anchor_py.cli.output import Column, print_table
from anchor_py.formatting import format_time

_NO_SCHEDULE = "AT007"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cron",
        help="list, pause and resume cron schedules",
        description="Cron schedules come from task definitions with a cronjob (anchor register).",
    )
    actions = add_command_group(parser, "cron_command", "ACTION")

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


def run_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        schedules = admin.list_cron(conn)
    if args.json:
        for schedule in schedules:
            print(json.dumps(admin.to_json(schedule), sort_keys=True, ensure_ascii=False))
        return 0
    if not schedules:
        print("anchor: no cron schedules (register task definitions with a cronjob first)")
        return 0
    columns = (Column("NAME", shrink=True, min_width=10), Column("EXPRESSION"), Column("TIMEZONE"),
               Column("NEXT FIRE"), Column("LAST FIRE"), Column("PAUSED"), Column("ERROR", shrink=True))
    print_table(columns, [
        (s.name, s.expression, s.timezone, "-" if s.paused else format_time(s.next_fire_at),
         format_time(s.last_fired_at), "yes" if s.paused else "no", s.last_error or "")
        for s in schedules
    ])
    return 0


def _act(args: argparse.Namespace, action: Callable[[admin.Conn, str], str], done: str) -> int:
    try:
        with connect(args) as conn:
            action(conn, args.name)
    except psycopg.Error as exc:
        if exc.sqlstate == _NO_SCHEDULE:
            raise UsageError(f"no cron schedule named {args.name!r} (see anchor cron list)") from exc
        raise
    print(f"anchor: cron schedule {args.name} {done}")
    return 0


def run_pause(args: argparse.Namespace) -> int:
    return _act(args, admin.pause_cron, "paused")


def run_resume(args: argparse.Namespace) -> int:
    return _act(args, admin.resume_cron, "resumed")
