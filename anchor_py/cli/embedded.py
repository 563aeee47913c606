"""`anchor embedded status` and `anchor embedded stop`: see and stop the project's embedded PostgreSQL.

The server is the one every command of this project uses when no DSN is given (see anchor_py.database for
how its data directory is found from any subdirectory).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anchor_py.cli.common import UsageError
from anchor_py.database import DatabaseUnavailable, embedded_data_dir, embedded_status, stop_embedded

EXIT_NOT_RUNNING = 1


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "embedded",
        help="see or stop the project's embedded PostgreSQL",
        description="The embedded PostgreSQL that commands start when no --dsn or DATABASE_URL is given. Its data "
        "directory is $ANCHOR_EMBEDDED_DIR, else [tool.anchor] embedded_dir, else .anchor/pgdata beside the "
        "project's pyproject.toml (the nearest one upward), so every subdirectory finds the same server.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help=f"say whether it runs (exit {EXIT_NOT_RUNNING} when it does not)")
    stop = actions.add_parser("stop", help="stop it (its data stays; the next command starts it again)")
    for action, handler in ((status, run_status), (stop, run_stop)):
        action.add_argument("--data-dir", type=Path, help="this data directory instead of the project's")
        action.set_defaults(handler=handler)


def _data_dir(args: argparse.Namespace) -> Path:
    try:
        return Path(args.data_dir).resolve() if args.data_dir else embedded_data_dir()
    except DatabaseUnavailable as exc:
        raise UsageError(str(exc)) from exc


def run_status(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    server = embedded_status(data_dir)
    if server is None:
        print(f"not running (data directory {data_dir})")
        return EXIT_NOT_RUNNING
    print(f"running: pid {server.pid}, data directory {data_dir}, {server.dsn}")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    try:
        server = stop_embedded(data_dir)
    except DatabaseUnavailable as exc:
        raise UsageError(str(exc)) from exc
    if server is None:
        print(f"not running (data directory {data_dir})")
    else:
        print(f"stopped (pid {server.pid}, data directory {data_dir})")
    return 0
