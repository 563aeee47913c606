"""`anchor worker` meeting a database that is missing, misconfigured or away, and being stopped, as a user
runs it: real subprocesses and real signals. A permanent problem exits at once with exit code 78 and the
fix; an outage is retried (and logged); SIGTERM ends it promptly in every state; a second SIGINT at once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from anchor_py.cli.worker import EXIT_DATABASE_SETUP
from anchor_py.migrate import load_migrations
from tests.worker.app import TASKS, TEST_TABLES
from tests.worker.conftest import enqueue, runs, task

REPO = Path(__file__).resolve().parents[2]
ANCHOR = str(Path(sys.executable).parent / "anchor")
Db = psycopg.Connection[dict[str, Any]]


def start_worker(dsn: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """A worker process, and the unique worker id that finds it (and anything it left) in the process table."""
    worker_id = f"lifecycle-{uuid.uuid4().hex[:12]}"
    process = subprocess.Popen(
        [ANCHOR, "worker", "--app", "tests.worker.app:make_executor", "--taskgen", "tests.worker.app",
         "--dsn", dsn, "--worker-id", worker_id, "--poll-interval", "200ms", *extra],
        cwd=REPO, env={**os.environ, "ANCHOR_TEST_DSN": dsn}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    return process, worker_id


def finish(process: subprocess.Popen[str], within: float) -> tuple[float, str]:
    """Wait for the process to exit by itself: (seconds it took, its stderr); killed and failed if too slow."""
    started = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"the worker did not exit within {within}s; it said:\n{stderr}") from None
    return time.monotonic() - started, stderr


def assert_nothing_left(worker_id: str) -> None:
    """No process of ours (the worker or anything it started) is still running."""
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # gone meanwhile
            if worker_id in command:
                left.append(f"{entry.name}: {command}")
    assert not left, left


def with_dsn(dsn: str, **changes: Any) -> str:
    return make_conninfo(**{**conninfo_to_dict(dsn), **changes})


def wait_until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_without_the_sql_core_the_worker_exits_at_once_naming_install_sql_10_of_10(dsn: str, db: Db) -> None:
    db.execute("drop schema anchor cascade")
    for attempt in range(10):
        process, worker_id = start_worker(dsn)
        _, stderr = finish(process, within=5)
        assert process.returncode == EXIT_DATABASE_SETUP, (attempt, stderr)
        assert "the SQL core is not installed" in stderr and "anchor install-sql" in stderr, (attempt, stderr)
        assert "Traceback" not in stderr, stderr
        assert_nothing_left(worker_id)


def test_an_older_sql_core_names_the_missing_migration(dsn: str, db: Db) -> None:
    newest = load_migrations()[-1]
    db.execute("delete from anchor.schema_migrations where version = %s", (newest.version,))
    process, worker_id = start_worker(dsn)
    _, stderr = finish(process, within=5)
    assert process.returncode == EXIT_DATABASE_SETUP, stderr
    assert f"older than this anchor-py (missing migrations {newest.version:04d}_{newest.name})" in stderr, stderr
    assert "anchor install-sql" in stderr
    assert_nothing_left(worker_id)


def test_a_missing_database_or_role_is_permanent(dsn: str) -> None:
    for dsn_variant, named in (
        (with_dsn(dsn, dbname="anchor_no_such_database"), 'database "anchor_no_such_database" does not exist'),
        (with_dsn(dsn, user="anchor_no_such_role"), 'role "anchor_no_such_role" does not exist'),
    ):
        process, worker_id = start_worker(dsn_variant)
        _, stderr = finish(process, within=5)
        assert process.returncode == EXIT_DATABASE_SETUP, stderr
        assert named in stderr and "check --dsn or DATABASE_URL" in stderr, stderr
        assert "Traceback" not in stderr, stderr
        assert_nothing_left(worker_id)


def test_a_role_without_anchor_worker_is_told_to_grant_it(dsn: str, db: Db) -> None:
    role = f"anchor_test_no_grant_{os.getpid()}"
    db.execute(f"create role {role} login")
    try:
        process, worker_id = start_worker(with_dsn(dsn, user=role))
        _, stderr = finish(process, within=5)
    finally:
        db.execute(f"drop role {role}")
    assert process.returncode == EXIT_DATABASE_SETUP, stderr
    assert "this role may not use the SQL core" in stderr and "grant it anchor_worker" in stderr, stderr
    assert_nothing_left(worker_id)


def test_a_closed_port_is_retried_with_its_message_until_sigterm(dsn: str) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process, worker_id = start_worker(with_dsn(dsn, host="127.0.0.1", port=port))
    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + 20
    while seen.count("database unavailable") < 2:  # retried, not given up
        assert time.monotonic() < deadline, seen
        seen += process.stderr.readline()
    assert "Connection refused" in seen and "retrying in" in seen, seen
    process.send_signal(signal.SIGTERM)
    took, _ = finish(process, within=5)
    assert process.returncode == 0
    assert took < 5
    assert_nothing_left(worker_id)


def _registered_worker(db: Db, worker_id: str) -> bool:
    return db.execute("select 1 from anchor.workers where worker_id = %s", (worker_id,)).fetchone() is not None


def test_sigterm_while_running_ends_the_worker_within_5s(dsn: str, db: Db) -> None:
    db.execute(TEST_TABLES)
    db.execute("select anchor.register_tasks(%s::jsonb, %s)", (TASKS.definitions_json(), TASKS.version))
    process, worker_id = start_worker(dsn)
    try:
        wait_until(lambda: _registered_worker(db, worker_id), 20)
        done = enqueue(db, "Work", {"userId": 1})
        wait_until(lambda: task(db, done)["state"] == "succeeded", 20)
    finally:
        process.send_signal(signal.SIGTERM)
    took, stderr = finish(process, within=5)
    assert process.returncode == 0, stderr
    assert not _registered_worker(db, worker_id)  # it deregistered on the way out
    assert_nothing_left(worker_id)


class CuttableProxy:
    """A TCP proxy to the database that can be cut: every connection through it drops, and new ones are
    refused, as when the database host goes away."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # cut
            server = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, server]
                if self._cut:  # cut while this one was being connected
                    client.close()
                    server.close()
                    return
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_sigterm_while_the_database_is_gone_ends_the_worker_within_5s(dsn: str, db: Db) -> None:
    db.execute(TEST_TABLES)
    db.execute("select anchor.register_tasks(%s::jsonb, %s)", (TASKS.definitions_json(), TASKS.version))
    parts = conninfo_to_dict(dsn)
    proxy = CuttableProxy(str(parts.get("host") or "127.0.0.1"), int(parts.get("port") or 5432))
    process, worker_id = start_worker(with_dsn(dsn, host="127.0.0.1", port=proxy.port))
    assert process.stderr is not None
    try:
        deadline = time.monotonic() + 20
        while f"worker {worker_id} started" not in process.stderr.readline():
            assert time.monotonic() < deadline and process.poll() is None
        proxy.cut()
        time.sleep(1.5)  # it notices: its heartbeat, LISTEN and claims fail and are retried
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
    took, stderr = finish(process, within=5)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "database unavailable (" in stderr or "LISTEN connection lost (" in stderr, stderr  # with the reason
    assert "could not deregister" in stderr, stderr  # it tried, then gave up: rescue takes over
    assert_nothing_left(worker_id)


def test_a_second_sigint_stops_at_once_instead_of_waiting_for_running_tasks(dsn: str, db: Db) -> None:
    db.execute(TEST_TABLES)
    db.execute("select anchor.register_tasks(%s::jsonb, %s)", (TASKS.definitions_json(), TASKS.version))
    slow = enqueue(db, "SyncWork", {"userId": 1, "sleep": 60})
    process, worker_id = start_worker(dsn, "--shutdown-grace", "60s")
    try:
        wait_until(lambda: bool(runs(db, slow)), 20)
    finally:
        process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert process.poll() is None  # the first one waits for the running task (up to the 60 s grace)
    process.send_signal(signal.SIGINT)
    _, stderr = finish(process, within=5)
    assert "stopping now (SIGINT again)" in stderr, stderr
    row = task(db, slow)
    assert (row["state"], row["attempts"], row["locked_by"]) == ("pending", 0, None), stderr  # handed back
    assert_nothing_left(worker_id)
