"""`anchor tasks list|show|wait|retry|cancel|pause|resume|purge`: look at tasks and act on single ones (and on
their descendants: cancel, pause and resume reach a task's whole subtree).

Exit codes (anchor_py.cli.common): 0 ok, 1 the database refused (e.g. retrying a succeeded task), 2 usage
error, 3 the database cannot be reached, 4 not found (a task id that does not exist). `tasks wait` adds
5 failed (failed or hook_failed), 6 cancelled, 7 timeout; 0 is succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import psycopg

from anchor_py import admin
from anchor_py.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    NOT_FOUND_SQLSTATE,
    UsageError,
    add_command_group,
    add_dsn_option,
    connect,
    parse_age,
    parse_positive,
    parse_since,
    parse_states,
    parse_task_id,
    split_values,
)
from anchor_py.cli.output import Column, Progress, pipe_safe, print_json, print_table
from anchor_py.formatting import (
    database_message,
    format_ago,
    format_attempts,
    format_duration,
    format_time,
    plural,
    snooze_text,
)


def register(subparsers: Any) -> None:
    tasks: argparse.ArgumentParser = subparsers.add_parser(
        "tasks",
        help="list, inspect, retry, cancel, pause, resume and purge tasks",
        description="Look at the tasks in the queue and act on single ones. "
        "Exit codes: 0 ok, 1 the database refused, 2 usage error, 3 database unreachable, 4 not found.",
    )
    sub = add_command_group(tasks, "tasks_command", "SUBCOMMAND")

    p = sub.add_parser(
        "list",
        help="tasks matching filters, newest first",
        description="List tasks, newest first, a page at a time (--before ID pages on; --all lists every match).",
    )
    p.add_argument("--state", action="append", default=[], metavar="STATE",
                   help=f"only these states (repeat or comma-separate): {', '.join(admin.STATES)}")
    p.add_argument("--name", action="append", default=[], metavar="TASK", help="only this task name (repeatable)")
    p.add_argument("--queue", action="append", default=[], metavar="QUEUE", help="only this queue (repeatable)")
    p.add_argument("--tag", metavar="TAG", help="only the task(s) with this unique tag")
    p.add_argument("--since", metavar="WHEN",
                   help="only tasks created within this long (30m, 2h, 7d) or since this time (2026-03-01T12:00Z)")
    p.add_argument("--limit", default="50", metavar="N", help="page size (default 50)")
    p.add_argument("--before", metavar="ID", help="the page of tasks older than this id (keyset paging)")
    p.add_argument("--all", action="store_true", help="every matching task, not one page")
    p.add_argument("--json", action="store_true", help="a JSON array of tasks on stdout")
    add_dsn_option(p)
    p.set_defaults(handler=run_list)

    p = sub.add_parser("show", help="one task: params, attempts, timings, every event with its traceback",
                       description="Show one task with its whole event history (errors with their tracebacks).")
    p.add_argument("id", metavar="ID", help="the task id")
    p.add_argument("--json", action="store_true", help="the task and its events as JSON")
    add_dsn_option(p)
    p.set_defaults(handler=run_show)

    p = sub.add_parser(
        "wait",
        help="wait until a task has finished; print its outcome (exit 0 succeeded, 5 failed, 6 cancelled, 7 timeout)",
        description="Wait until the task is final and print its state, result and last error. Exit codes: "
        "0 succeeded, 5 failed or hook_failed, 6 cancelled, 7 the timeout passed first, 4 no such task, "
        "3 database unreachable, 2 usage error.",
    )
    p.add_argument("id", metavar="ID", help="the task id")
    p.add_argument("--timeout", metavar="DURATION", help="give up after this long (30s, 5m); default: never")
    p.add_argument("--json", action="store_true", help="the outcome as JSON: id, state, result, error, finished_at")
    add_dsn_option(p)
    p.set_defaults(handler=run_wait)

    p = sub.add_parser(
        "retry",
        help="run tasks again now (failed, hook_failed, cancelled: with a fresh attempt budget)",
        description="Run tasks again through anchor.retry_now: pending → due now; failed, hook_failed or "
        "cancelled → pending with a fresh attempt budget (history stays). With --hook, a hook_failed task "
        "only re-runs its onFailed hook (anchor.retry_hook).",
    )
    p.add_argument("ids", nargs="+", metavar="ID", help="task ids")
    p.add_argument("--hook", action="store_true", help="re-run only the onFailed hook of hook_failed tasks")
    p.add_argument("--json", action="store_true", help="one JSON object per id: id, outcome or error")
    add_dsn_option(p)
    p.set_defaults(handler=run_retry)

    for name, handler, summary, description in (
        ("cancel", run_cancel, "cancel tasks and their descendants (pending: now; running: the worker stops it)",
         "Cancel tasks and every live descendant (with_parent), in one transaction per id, through anchor.cancel: "
         "blocked, paused and pending → cancelled; running → cancel requested (its worker cancels the "
         "execution; no retry)."),
        ("pause", run_pause, "pause tasks and their descendants (never claimed until resumed)",
         "Pause tasks and every live descendant, in one transaction per id, through anchor.pause_task: "
         "blocked and pending → paused; a running one finishes its attempt and, if it would retry, waits "
         "paused."),
        ("resume", run_resume, "resume paused tasks and their descendants",
         "Resume tasks and every paused descendant, in one transaction per id, through anchor.resume_task: "
         "each goes back to pending, or to blocked while its dependencies are unmet."),
    ):
        p = sub.add_parser(name, help=summary, description=description)
        p.add_argument("ids", nargs="+", metavar="ID", help="task ids")
        p.add_argument("--json", action="store_true", help="one JSON object per id: id, outcome or error")
        add_dsn_option(p)
        p.set_defaults(handler=handler)

    p = sub.add_parser(
        "purge",
        help="delete finished tasks older than a period (the workers' retention function)",
        description="Delete finished tasks (and their events) whose finished_at is older than --older-than, "
        "in batches, through anchor.prune, the function the workers' retention uses. --state failed "
        "covers failed, hook_failed and cancelled (the retention function purges them together).",
    )
    p.add_argument("--state", action="append", required=True, metavar="STATE",
                   help="succeeded and/or failed (repeat or comma-separate)")
    p.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 7d, 12h, 30m")
    p.add_argument("--batch-size", default="1000", metavar="N", help="rows per transaction (default 1000)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.add_argument("--json", action="store_true", help='the result as JSON: {"deleted": N, ...}')
    add_dsn_option(p)
    p.set_defaults(handler=run_purge)


# list ------------------------------------------------------------------------------------------------

LIST_COLUMNS = (
    Column("ID", align="right"),
    Column("TASK", shrink=True, min_width=10),
    Column("STATE"),
    Column("QUEUE", shrink=True, min_width=6),
    Column("TRIES", align="right"),
    Column("CREATED", align="right"),
    Column("LAST ERROR", shrink=True, min_width=10),
)


@pipe_safe
def run_list(args: argparse.Namespace) -> int:
    states = parse_states(args.state)
    limit = parse_positive(args.limit, "--limit", 100_000)
    before = parse_task_id(args.before) if args.before else None
    with connect(args) as conn:
        now = admin.db_now(conn)
        since = parse_since(args.since, now) if args.since else None
        filters = admin.TaskFilter(
            states=states, names=split_values(args.name), queues=split_values(args.queue), tag=args.tag, since=since
        )
        if args.all:
            tasks = list(admin.iter_tasks(conn, filters))
            next_before = None
        else:
            page = admin.list_tasks(conn, filters, limit=limit, before_id=before)
            tasks, next_before = page.tasks, page.next_before_id
    if args.json:
        print_json(admin.to_json(tasks))
        return 0
    if not tasks:
        print("no tasks match")
        return 0
    rows = [
        (t.id, t.name, t.state, t.queue, format_attempts(t.attempts, t.max_attempts), format_ago(t.created_at, now),
         t.last_error or "")
        for t in tasks
    ]
    print_table(LIST_COLUMNS, rows)
    if next_before is not None:
        print(f"(more: add --before {next_before} for the next page, or --all)", file=sys.stderr)
    return 0


# show ------------------------------------------------------------------------------------------------


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").split("\n"))


@pipe_safe
def run_show(args: argparse.Namespace) -> int:
    task_id = parse_task_id(args.id)
    with connect(args) as conn:
        try:
            task = admin.get_task(conn, task_id)
        except admin.TaskNotFound as exc:
            print(f"anchor tasks show: {exc}", file=sys.stderr)
            return EXIT_NOT_FOUND
    if args.json:
        print_json(admin.to_json(task))
        return 0
    now = task.read_at
    intervals = ",".join(format_duration(i) for i in task.retry_intervals) or "none (one attempt)"
    lines = [
        f"Task {task.id}: {task.name}  [{task.state}]" + ("  (cancel requested)" if task.cancel_requested else ""),
        f"  queue         {task.queue} (priority {task.priority})",
        f"  attempts      {format_attempts(task.attempts, task.max_attempts)}"
        f"   rescues {task.rescues}   hook attempts {task.hook_attempts}",
        f"  retry after   {intervals}   timeout {format_duration(task.timeout)}",
        f"  unique tag    {task.unique_tag or '-'}",
        f"  created       {format_time(task.created_at)} ({format_ago(task.created_at, now)})",
        f"  run at        {format_time(task.run_at)} ({format_ago(task.run_at, now)})",
    ]
    if task.scheduled_at:
        lines.append(f"  scheduled at  {format_time(task.scheduled_at)} (cron fire time)")
    if task.held:
        lines.append(f"  held by       {task.locked_by} since {format_time(task.locked_at)}, "
                     f"deadline {format_time(task.deadline)}")
    if task.finished_at:
        lines.append(f"  finished      {format_time(task.finished_at)} ({format_ago(task.finished_at, now)}), "
                     f"{format_duration(task.finished_at - task.created_at)} after it was created")
    lines.append("  params        " + json.dumps(task.params, ensure_ascii=False))
    if task.progress is not None:
        lines.append("  progress      " + json.dumps(task.progress, ensure_ascii=False))
    if task.result is not None:
        lines.append("  result        " + json.dumps(task.result, ensure_ascii=False))
    if task.last_error:
        lines.append(_indent(task.last_error, "  last error    ").replace("\n  last error    ", "\n" + " " * 16))
    lines += _workflow_lines(task)
    lines.append("")
    if not task.events:
        lines.append("Events: none (a plain success records none)")
    else:
        lines.append(f"Events ({len(task.events)}):")
        for event in task.events:
            head = f"  {format_time(event.at)}  {event.kind}"
            if event.attempt is not None:
                head += f"  attempt {event.attempt}"
            if event.worker_id:
                head += f"  on {event.worker_id}"
            if event.details and event.details.get("outcome"):
                head += f"  -> {event.details['outcome']}"
            snoozed = snooze_text(event.details) if event.kind == "snoozed" else None
            if snoozed:
                head += f"  {snoozed} (attempt given back)"
            lines.append(head)
            if event.error_type or event.message:
                error = f"{event.error_type}: {event.message}" if event.error_type else str(event.message)
                lines.append(_indent(error, "      "))
            if event.traceback:
                lines.append(_indent(event.traceback, "      | "))
    print("\n".join(lines))
    return 0


def _link(link: admin.TaskLink) -> str:
    return f"{link.id} {link.name} [{link.state}]"


def _workflow_lines(task: admin.TaskDetail) -> list[str]:
    """The task's parent, dependencies, dependents and children (each list bounded, with how many more)."""
    lines = []
    if task.parent is not None:
        lines.append(f"  parent        {_link(task.parent)}")
    for label, related in (("depends on", task.dependencies), ("dependents", task.dependents),
                           ("children", task.children)):
        if not related.total:
            continue
        links = [_link(link) for link in related.tasks]
        if related.more:
            links.append(f"... {related.more} more")
        lines.append(f"  {label:<13} " + ("\n" + " " * 16).join(links))
    return lines


# wait ------------------------------------------------------------------------------------------------

EXIT_FAILED = 5
EXIT_CANCELLED = 6
EXIT_TIMEOUT = 7


@pipe_safe
def run_wait(args: argparse.Namespace) -> int:
    task_id = parse_task_id(args.id)
    timeout = parse_age(args.timeout, "--timeout") if args.timeout else None
    with connect(args) as conn:
        try:
            outcome = admin.wait_task(conn, task_id, timeout)
        except LookupError:
            print(f"anchor tasks wait: no task {task_id}", file=sys.stderr)
            return EXIT_NOT_FOUND
        except TimeoutError:
            if args.json:
                print_json({"id": task_id, "state": None, "timeout": True})
            else:
                print(f"anchor tasks wait: task {task_id} did not finish within {args.timeout}", file=sys.stderr)
            return EXIT_TIMEOUT
    if args.json:
        print_json(admin.to_json(outcome))
    else:
        print(f"task {task_id}: {outcome.state}")
        if outcome.result is not None:
            print("result: " + json.dumps(outcome.result, ensure_ascii=False))
        if outcome.error and outcome.state != "succeeded":
            print(_indent(outcome.error, "error: ").replace("\nerror: ", "\n" + " " * 7))
    if outcome.state == "succeeded":
        return 0
    return EXIT_CANCELLED if outcome.state == "cancelled" else EXIT_FAILED


# retry / cancel --------------------------------------------------------------------------------------


def _act(args: argparse.Namespace, verb: str, action: Any) -> int:
    """Runs `action(conn, id)` per id, each in its own transaction; reports each. Exit 1 when the database
    refused any, else 4 when any id does not exist, else 0."""
    ids = [parse_task_id(i) for i in args.ids]
    refused = missing = False
    results: list[dict[str, Any]] = []
    with connect(args) as conn:
        for task_id in ids:
            try:
                outcome = action(conn, task_id)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                message = database_message(exc)
                if exc.sqlstate == NOT_FOUND_SQLSTATE:
                    missing = True
                else:
                    refused = True
                results.append({"id": task_id, "ok": False, "error": message, "sqlstate": exc.sqlstate})
                if not args.json:
                    print(f"anchor tasks {verb}: {message}", file=sys.stderr)
                continue
            results.append({"id": task_id, "ok": True, "outcome": outcome})
            if not args.json:
                print(f"task {task_id}: {outcome}")
    if args.json:
        print_json(results)
    return EXIT_REFUSED if refused else EXIT_NOT_FOUND if missing else 0


@pipe_safe
def run_retry(args: argparse.Namespace) -> int:
    return _act(args, "retry", admin.retry_hook if args.hook else admin.retry_task)


@pipe_safe
def run_cancel(args: argparse.Namespace) -> int:
    return _act(args, "cancel", admin.cancel_task)


@pipe_safe
def run_pause(args: argparse.Namespace) -> int:
    return _act(args, "pause", admin.pause_task)


@pipe_safe
def run_resume(args: argparse.Namespace) -> int:
    return _act(args, "resume", admin.resume_task)


# purge -----------------------------------------------------------------------------------------------


@pipe_safe
def run_purge(args: argparse.Namespace) -> int:
    states = split_values(args.state)
    older_than = parse_age(args.older_than, "--older-than")
    batch_size = parse_positive(args.batch_size, "--batch-size", 100_000)
    try:
        succeeded_after, failed_after = admin.prune_periods(states, older_than)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    groups = [g for g, period in (("succeeded", succeeded_after), ("failed", failed_after)) if period]
    what = " and ".join("failed/hook_failed/cancelled" if g == "failed" else g for g in groups)
    with connect(args) as conn:
        total = admin.prune_count(conn, succeeded_after=succeeded_after, failed_after=failed_after)
        if args.dry_run:
            if args.json:
                print_json({"would_delete": total, "states": groups, "older_than_seconds": older_than.total_seconds()})
            else:
                print(f"would delete {plural(total, what + ' task')} finished more than "
                      f"{format_duration(older_than)} ago")
            return 0
        progress = None if args.json or total == 0 else Progress("deleted", total)
        result = admin.prune(
            conn,
            succeeded_after=succeeded_after,
            failed_after=failed_after,
            batch_size=batch_size,
            progress=progress.update if progress else None,
        )
        if progress:
            progress.finish()
    if args.json:
        print_json({"deleted": result.deleted, "batches": result.batches, "states": groups,
                    "older_than_seconds": older_than.total_seconds()})
    else:
        print(f"deleted {plural(result.deleted, what + ' task')} finished more than {format_duration(older_than)} ago")
    return 0
