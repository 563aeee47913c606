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
    parser.add_argument(
        "--roles",
        action="store_true",
        help="also create the roles anchor_enqueuer, anchor_worker, anchor_admin (cluster-wide; needs CREATEROLE)",
    )
    add_dsn_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        applied = install(dsn_from(args), roles=args.roles)
    except MigrationError as exc:
        raise UsageError(str(exc)) from exc
    if not applied:
        print("anchor: the SQL core is up to date")
    for migration in applied:
        print(f"anchor: applied {migration.version:04d}_{migration.name}")
    if args.roles:
        print("anchor: roles anchor_enqueuer, anchor_worker, anchor_admin are in place")
    return 0
