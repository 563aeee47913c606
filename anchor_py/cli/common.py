"""Pieces every `anchor` subcommand shares."""

from __future__ import annotations

import argparse

from anchor_py.database import DatabaseUnavailable, resolve_dsn


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2, never a traceback."""


def add_dsn_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        help="PostgreSQL connection string (default: $DATABASE_URL, else the embedded server in .anchor/pgdata)",
    )


def dsn_from(args: argparse.Namespace) -> str:
    try:
        return resolve_dsn(args.dsn)
    except DatabaseUnavailable as exc:
        raise UsageError(str(exc)) from exc
