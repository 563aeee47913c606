"""`anchor install-sql`: apply the SQL core's pending migrations."""

from __future__ import annotations

import argparse
from typing import Any

from anchor_py.cli.common import UsageError, add_dsn_option, dsn_from
from anchor_py.migrate import MigrationError, install


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "install-sql",
        help="apply the SQL core's pending migrations (safe to re-run)",
        description="Apply pending migrations in order, each in a transaction, under an advisory lock.",
    )
    add_dsn_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        applied = install(dsn_from(args))
    except MigrationError as exc:
        raise UsageError(str(exc)) from exc
    if not applied:
        print("anchor: the SQL core is up to date")
    for migration in applied:
        print(f"anchor: applied {migration.version:04d}_{migration.name}")
    return 0
