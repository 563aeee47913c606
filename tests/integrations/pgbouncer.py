"""A PgBouncer (Debian's package) in ``pool_mode = transaction`` in front of the test server, for one test.

Started on a free port with its own config in a temporary directory, as ``nobody`` when the tests run as root
(PgBouncer refuses root); stopped when the test ends. Trust auth, like the test server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.integrations.servers import free_port, wait_until_answers

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@contextmanager
def pgbouncer(server_dsn: str, pool_size: int = 10) -> Iterator[str]:
    """Yields the DSN of ``server_dsn``'s database through a new PgBouncer in transaction mode."""
    if not Path(BINARY).is_file():
        pytest.fail("pgbouncer is not installed: apt-get install pgbouncer (.ci/run installs it)")
    server = conninfo_to_dict(server_dsn)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="anchor-pgbouncer-"))
    (workdir / "userlist.txt").write_text(f'"{server.get("user", "postgres")}" ""\n')
    (workdir / "pgbouncer.ini").write_text(f"""
[databases]
* = host={server.get("host", "127.0.0.1")} port={server.get("port", 5432)}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = transaction
# round robin over the server connections (not LIFO): state left on one is soon missed on the next
server_round_robin = 1
default_pool_size = {pool_size}
min_pool_size = {min(pool_size, 4)}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
""")
    command = [BINARY, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        os.chmod(workdir, 0o755)
        for path in [workdir, *workdir.iterdir()]:
            os.chown(path, 65534, 65534)  # nobody
        command = ["runuser", "-u", "nobody", "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dsn = make_conninfo(server_dsn, host="127.0.0.1", port=port)
    try:
        wait_until_answers(process, lambda: _answers(dsn))
        _wait_for_server_connections(server_dsn, min(pool_size, 4))
        yield dsn
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_server_connections(server_dsn: str, count: int, timeout: float = 5) -> None:
    """PgBouncer opens min_pool_size server connections in the background: wait for them, so that round robin
    spreads consecutive statements over several from the first one on."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        query = "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
        while (conn.execute(query).fetchone() or (0,))[0] < count and time.monotonic() < deadline:
            time.sleep(0.1)


def _answers(dsn: str) -> bool:
    with psycopg.connect(dsn, connect_timeout=2, prepare_threshold=None) as conn:
        return conn.execute("select 1").fetchone() == (1,)
