"""Pieces every `anchor` subcommand shares: errors and exit codes, the --dsn option and the connection,
command groups, and the parsers of ids, counts, states and periods.

Exit codes: 0 ok, 1 the database refused, 2 usage error, 3 the database cannot be reached, 4 not found.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from anchor_py import admin
from anchor_py.database import DatabaseUnavailable, resolve_dsn
from anchor_py.formatting import parse_period

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4

# the SQL core's "no such task" (anchor.retry_now, anchor.cancel, ... on an id that does not exist)
NOT_FOUND_SQLSTATE = "AT004"


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2, never a traceback."""


class CannotReach(Exception):
    """The database cannot be reached with the connection string given: exit code 3."""


def add_dsn_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        help="PostgreSQL connection string (default: $DATABASE_URL, else the embedded server in .anchor/pgdata)",
    )


def dsn_from(args: argparse.Namespace) -> str:
    """The DSN the command uses; CannotReach when it is not a connection string at all."""
    try:
        dsn = resolve_dsn(args.dsn)
    except DatabaseUnavailable as exc:
        raise UsageError(str(exc)) from exc
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        # a malformed string never reaches any server: the same class of failure as a closed port
        raise CannotReach(f"the connection string is malformed: {' '.join(str(exc).split())}") from None
    return dsn


def connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn_from(args), autocommit=True, connect_timeout=10)


def add_command_group(parser: argparse.ArgumentParser, dest: str, metavar: str) -> Any:
    """Subcommands under `parser`; run without one, the group prints its subcommands (exit 2)."""

    def show_subcommands(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    parser.set_defaults(handler=show_subcommands)
    return parser.add_subparsers(dest=dest, metavar=metavar)


# Argument parsing ------------------------------------------------------------------------------------


def parse_task_id(text: str) -> int:
    value = text.strip()
    if not value.isdigit() or int(value) < 1 or int(value) > 2**63 - 1:
        raise UsageError(f"{text!r} is not a task id (a whole number above zero)")
    return int(value)


def parse_positive(text: str, what: str, maximum: int = 1_000_000) -> int:
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise UsageError(f"{what} {text!r} must be a whole number from 1 to {maximum}")
    return int(value)


def parse_age(text: str, what: str) -> timedelta:
    """A period option (30m, 12h, 7d, 1d12h); UsageError naming the option otherwise."""
    try:
        return parse_period(text)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: a period back from now, or an ISO 8601 time (UTC when it has no offset)."""
    if re.match(r"^\s*\d{4}-\d{2}-\d{2}", text):
        try:
            value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise UsageError(f"--since {text!r} is not a time (example: 2026-03-01T12:00:00Z)") from None
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return now - parse_period(text)
    except ValueError:
        raise UsageError(f"--since {text!r} is not a period (30m, 2h, 7d) or a time (2026-03-01T12:00Z)") from None


def split_values(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def parse_states(values: Sequence[str]) -> tuple[str, ...]:
    states = split_values(values)
    for state in states:
        if state not in admin.STATES:
            raise UsageError(f"unknown state {state!r} (states: {', '.join(admin.STATES)})")
    return states
