"""`anchor enqueue NAME JSON`: enqueue one task from the shell, through anchor.enqueue (the same defaults
and validation as every other client)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

import psycopg

from anchor_py import queries
from anchor_py.cli.common import UsageError, add_dsn_option, connect, parse_task_id, split_values
from anchor_py.cli.output import print_json
from anchor_py.durations import InvalidDuration, parse_duration, parse_intervals
from anchor_py.enqueue_args import refuse_nul
from anchor_py.formatting import database_message


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "enqueue",
        help="enqueue one task: anchor enqueue SendEmail '{\"userId\": 1, \"templateId\": \"welcome\"}'",
        description="Enqueue one task through anchor.enqueue: unset options take the task definition's values; "
        "the params are checked against the task's schema by the database. Prints the task id.",
    )
    parser.add_argument("name", help="the task name, as in the task file")
    parser.add_argument("params", nargs="?", default="{}", help="the params as a JSON object (default: {})")
    parser.add_argument("--delay", help="run after this long, on the database clock (e.g. 10m)")
    parser.add_argument("--run-at", help="run at this time (ISO 8601 with an offset, e.g. 2030-01-01T09:00:00Z)")
    parser.add_argument("--unique-tag", help="enqueue nothing if a live task holds this tag (its id is printed)")
    parser.add_argument("--retry-interval", help="retry interval or backoff list (e.g. 1m,2m,4m)")
    parser.add_argument("--max-attempts", type=int, help="total executions allowed (-1: unlimited)")
    parser.add_argument("--timeout", help="maximum execution time (e.g. 30m)")
    parser.add_argument("--priority", type=int, help="lower runs first")
    parser.add_argument("--queue", help="the queue to put it in")
    parser.add_argument("--depends-on", action="append", default=[], metavar="ID",
                        help="run only after these tasks have succeeded (repeat or comma-separate)")
    parser.add_argument("--parent", metavar="ID", help="make it a child of this task (cancel and pause reach it)")
    parser.add_argument("--json", action="store_true", help='print {"id": ...} instead of the bare id')
    add_dsn_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    arguments = {"name": args.name, "params": _params(args), **_overrides(args)}
    with connect(args) as conn:
        try:
            row = conn.execute(queries.ENQUEUE, arguments).fetchone()
        except psycopg.Error as error:
            # the SQL core's own refusals (unknown task, params, overrides) are the user's to fix; its HINT
            # says how
            if error.sqlstate and error.sqlstate.startswith("AT"):
                raise UsageError(database_message(error)) from None
            raise
    assert row is not None
    if args.json:
        print_json({"id": row[0]})
    else:
        print(row[0])
    return 0


def _params(args: argparse.Namespace) -> str:
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as error:
        raise UsageError(f"params: not JSON ({error})") from None
    if not isinstance(params, dict):
        raise UsageError(f"params: expected a JSON object, got {type(params).__name__}")
    try:
        refuse_nul(args.name, params)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return json.dumps(params)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    try:
        return {
            "delay": parse_duration(args.delay) if args.delay else None,
            "run_at": _aware(args.run_at) if args.run_at else None,
            "unique_tag": args.unique_tag,
            "retry_intervals": parse_intervals(args.retry_interval) if args.retry_interval else None,
            "max_attempts": args.max_attempts,
            "timeout": parse_duration(args.timeout) if args.timeout else None,
            "priority": args.priority,
            "queue": args.queue,
            "depends_on": [parse_task_id(i) for i in split_values(args.depends_on)] or None,
            "parent_id": parse_task_id(args.parent) if args.parent else None,
        }
    except InvalidDuration as error:
        raise UsageError(str(error)) from None


def _aware(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--run-at: {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise UsageError(f"--run-at: {text!r} needs an offset (e.g. Z or +08:00)")
    return moment
