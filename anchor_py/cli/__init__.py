"""The `anchor` command: one entry point, a subcommand per module of this package.

Each command module exposes `register(subparsers)`, which adds its subcommands and sets `handler` on them:
a function taking the parsed arguments and returning the exit code. A user mistake raises `UsageError`
(exit 2, its message, no traceback); the other exit codes are in anchor_py.cli.common.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import psycopg

from anchor_py.cli.common import (
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CannotReach,
    UsageError,
    add_command_group,
)
from anchor_py.formatting import database_message

# Listed in the order `anchor --help` shows them.
COMMAND_MODULES = (
    "anchor_py.cli.generate",
    "anchor_py.cli.install_sql",
    "anchor_py.cli.register",
    "anchor_py.cli.enqueue",
    "anchor_py.cli.worker",
    "anchor_py.cli.cron",
    "anchor_py.cli.queues",
    "anchor_py.cli.tasks",
    "anchor_py.cli.stats",
    "anchor_py.cli.dashboard",
    "anchor_py.cli.embedded",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchor", description="Durable background tasks on PostgreSQL.")
    subparsers = add_command_group(parser, "command", "COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except UsageError as exc:
        print(f"anchor {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CannotReach as exc:
        print(f"anchor {args.command}: cannot reach the database: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        print(f"anchor {args.command}: cannot reach the database: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except psycopg.Error as exc:
        print(f"anchor {args.command}: the database refused: {database_message(exc)}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
