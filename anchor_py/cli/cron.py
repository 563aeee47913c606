"""`anchor cron list|pause NAME|resume NAME|delete NAME`: inspect and steer the cron schedules stored in the
database, those of the task definitions (source yaml) and those created at run time (source runtime), through
anchor_py.admin as the dashboard does."""

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
_REFUSED = "AT003"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cron",
        help="list, pause and resume cron schedules",
        description="Cron schedules come from task definitions with a cronjob (anchor register) and from "
        "the application at run time (schedule_<task> on a runner, or anchor.cron_upsert).",
    )
    actions = add_command_group(parser, "cron_command", "ACTION")

    listing = actions.add_parser(
        "list", help="every schedule: source, task, expression, next fire, last fire, paused, error"
    )
    listing.add_argument("--json", action="store_true", help="print one JSON object per schedule")
    add_dsn_option(listing)
    listing.set_defaults(handler=run_list)

    for action, helptext, handler in (
        ("pause", "stop a schedule from firing (fire times while paused are not caught up)", run_pause),
        ("resume", "let a paused schedule fire again, from the next fire time after now", run_resume),
        ("delete", "delete a runtime schedule (a YAML one follows the task definitions)", run_delete),
    ):
        sub = actions.add_parser(action, help=helptext)
        sub.add_argument("name", metavar="NAME", help="the schedule's name (a YAML schedule's is its task's)")
        add_dsn_option(sub)
        sub.set_defaults(handler=handler)


def run_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        schedules = admin.list_cron(conn)
    if args.json:
        for schedule in schedules:
            print(json.dumps(admin.to_json(schedule), sort_keys=True, ensure_ascii=False))
        return 0
    if not schedules:
        print("anchor: no cron schedules (register task definitions with a cronjob, or create one at run time)")
        return 0
    columns = (Column("NAME", shrink=True, min_width=10), Column("SOURCE"), Column("TASK", shrink=True, min_width=8),
               Column("EXPRESSION"), Column("TIMEZONE"), Column("NEXT FIRE"), Column("LAST FIRE"), Column("PAUSED"),
               Column("ERROR", shrink=True))
    print_table(columns, [
        (s.name, s.source, s.task_name, s.expression, s.timezone,
         "-" if s.paused or not s.task_active else format_time(s.next_fire_at), format_time(s.last_fired_at),
         "yes" if s.paused else "no", _problem(s))
        for s in schedules
    ])
    return 0


def _problem(schedule: admin.CronSchedule) -> str:
    if not schedule.task_active:
        return f"task {schedule.task_name} is not registered: not firing until it is"
    return schedule.last_error or ""


def _act(args: argparse.Namespace, action: Callable[[admin.Conn, str], str], done: str) -> int:
    try:
        with connect(args) as conn:
            action(conn, args.name)
    except psycopg.Error as exc:
        if exc.sqlstate == _NO_SCHEDULE:
            raise UsageError(f"no cron schedule named {args.name!r} (see anchor cron list)") from exc
        if exc.sqlstate == _REFUSED:
            raise UsageError(exc.diag.message_primary or str(exc)) from exc
        raise
    print(f"anchor: cron schedule {args.name} {done}")
    return 0


def run_pause(args: argparse.Namespace) -> int:
    return _act(args, admin.pause_cron, "paused")


def run_resume(args: argparse.Namespace) -> int:
    return _act(args, admin.resume_cron, "resumed")


def run_delete(args: argparse.Namespace) -> int:
    def delete(conn: admin.Conn, name: str) -> str:
        outcome = admin.delete_cron(conn, name)
        if outcome == "absent":
            raise UsageError(f"no cron schedule named {name!r} (see anchor cron list)")
        return outcome

    return _act(args, delete, "deleted")
