"""`anchor queues list|pause NAME|resume NAME`: the queues, their limits and live tasks, and pausing them
(through anchor_py.admin, as the dashboard does). A pause is stored in the database, so every worker obeys
it at once: no new execution of the queue starts, running ones finish, failure hooks still run.

Exit codes: 0 done, 4 no such queue, 2 usage, 1 refused, 3 unreachable (anchor_py.cli.common).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from anchor_py import admin
from anchor_py.cli.common import EXIT_NOT_FOUND, UsageError, add_command_group, add_dsn_option, connect
from anchor_py.cli.output import Column, pipe_safe, print_json, print_table
from anchor_py.formatting import format_duration, format_time


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "queues",
        help="list, pause and resume queues",
        description="Queues, their limits (the task file's queues: section) and live tasks; pause and resume them.",
    )
    actions = add_command_group(parser, "queues_command", "ACTION")

    listing = actions.add_parser(
        "list", help="every queue: paused, limits, pending (held by a limit), running, failing",
        description="Every queue that has settings, is a registered task's queue, or holds live tasks. HELD counts "
        "the due pending tasks a limit governs: they start as its slots and rate windows allow.",
    )
    listing.add_argument("--json", action="store_true", help="a JSON array of queues on stdout")
    add_dsn_option(listing)
    listing.set_defaults(handler=run_list)

    for action, helptext in (
        ("pause", "start no new executions of a queue, on every worker (running ones finish, hooks still run)"),
        ("resume", "let a paused queue's tasks start again at once"),
    ):
        sub = actions.add_parser(action, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        sub.add_argument("name", metavar="NAME", help="the queue's name (see anchor queues list)")
        sub.add_argument("--json", action="store_true", help='the outcome as JSON: {"queue": NAME, "outcome": ...}')
        add_dsn_option(sub)
        sub.set_defaults(handler=run_pause if action == "pause" else run_resume)


@pipe_safe
def run_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        queues = admin.list_queues(conn)
    if args.json:
        print_json(admin.to_json(queues))
        return 0
    if not queues:
        print("anchor: no queues (register task definitions first)")
        return 0
    columns = (Column("QUEUE", shrink=True, min_width=10), Column("PAUSED"), Column("CONCURRENCY", align="right"),
               Column("RATE LIMIT", align="right"), Column("PENDING", align="right"), Column("HELD", align="right"),
               Column("RUNNING", align="right"), Column("FAILING", align="right"))
    print_table(columns, [
        (q.name, f"since {format_time(q.paused_at)}" if q.paused else "no",
         "-" if q.concurrency is None else q.concurrency, rate_text(q), q.pending, q.held, q.running, q.failing)
        for q in queues
    ])
    return 0


def rate_text(queue: admin.QueueInfo) -> str:
    """``100/1m``: executions started per window; '-' without a rate limit."""
    if queue.rate_limit is None or queue.rate_period is None:
        return "-"
    return f"{queue.rate_limit}/{format_duration(queue.rate_period)}"


def _act(args: argparse.Namespace, action: Callable[[admin.Conn, str], str]) -> int:
    name: str = args.name
    if not name.strip():
        raise UsageError("a queue name must not be empty")
    try:
        with connect(args) as conn:
            outcome = action(conn, name)
    except admin.QueueNotFound as exc:
        if args.json:
            print_json({"queue": name, "ok": False, "error": str(exc)})
        else:
            print(f"anchor queues: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print_json({"queue": name, "ok": True, "outcome": outcome})
    else:
        print(f"queue {name}: {outcome}")
    return 0


@pipe_safe
def run_pause(args: argparse.Namespace) -> int:
    return _act(args, admin.pause_queue)


@pipe_safe
def run_resume(args: argparse.Namespace) -> int:
    return _act(args, admin.resume_queue)
