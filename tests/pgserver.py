"""Which PostgreSQL the tests use: $DATABASE_URL or PG* when set, else the machine's server at
127.0.0.1:5432 when it answers, else an embedded one of this test session's own.
ANCHOR_TEST_SERVER=embedded skips straight to the embedded one (how CI proves that path works).

The session's embedded server lives in .anchor/test-pgdata-<pid> (also $ANCHOR_EMBEDDED_DIR for the commands
the tests run) and is stopped and deleted when the session ends, however it ends; one left by a killed session
is stopped and deleted by the next session."""

from __future__ import annotations

import atexit
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from anchor_py.database import EMBEDDED_DIR_ENV, process_running, start_embedded, stop_embedded

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str | None
    origin: str

    def dsn(self, dbname: str) -> str:
        return make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password or None, dbname=dbname
        )


def _from_conninfo(conninfo: str, origin: str) -> Server:
    parts = conninfo_to_dict(conninfo)
    return Server(
        host=str(parts.get("host") or os.environ.get("PGHOST") or "127.0.0.1"),
        port=int(parts.get("port") or os.environ.get("PGPORT") or 5432),
        user=str(parts.get("user") or os.environ.get("PGUSER") or "postgres"),
        password=str(parts["password"]) if parts.get("password") else os.environ.get("PGPASSWORD"),
        origin=origin,
    )


def _answers(conninfo: str) -> bool:
    try:
        with psycopg.connect(conninfo, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


EMBEDDED_DIRS = REPO / ".anchor"
SESSION_EMBEDDED_DIR = EMBEDDED_DIRS / f"test-pgdata-{os.getpid()}"


def find_server() -> Server:
    _discard_servers_of_dead_sessions()
    # Any embedded server this session starts, on purpose or through a command run without a DSN, is its own,
    # and goes when the session ends (registered before starting: a half-started server goes too).
    os.environ[EMBEDDED_DIR_ENV] = str(SESSION_EMBEDDED_DIR)
    atexit.register(discard_embedded, SESSION_EMBEDDED_DIR)
    if os.environ.get("ANCHOR_TEST_SERVER") == "embedded":
        return _embedded()
    if os.environ.get("DATABASE_URL"):
        return _from_conninfo(os.environ["DATABASE_URL"], "DATABASE_URL")
    if os.environ.get("PGHOST") or os.environ.get("PGPORT"):
        return _from_conninfo("", "PG* environment")
    local = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    if _answers(local):
        return _from_conninfo(local, "the server at 127.0.0.1:5432")
    return _embedded()


def _embedded() -> Server:
    return _from_conninfo(start_embedded(SESSION_EMBEDDED_DIR), "an embedded server of this session")


def discard_embedded(data_dir: Path) -> None:
    """Stops the embedded server on ``data_dir`` (if it runs) and deletes the directory."""
    stop_embedded(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)


def _discard_servers_of_dead_sessions() -> None:
    for data_dir in EMBEDDED_DIRS.glob("test-pgdata*"):
        match = re.fullmatch(r"test-pgdata-(\d+)", data_dir.name)
        if match is None or not process_running(int(match[1])):  # test-pgdata: the one all sessions once shared
            discard_embedded(data_dir)
