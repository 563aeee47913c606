"""The built wheel, installed (not editable) into a fresh virtualenv, runs the README's Quick start in a new,
empty directory, as a user would: generate, install-sql, register, enqueue from Python and from SQL, a worker,
`anchor tasks list` and the dashboard. Nothing of the checkout is importable there."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import SERVER

REPO = Path(__file__).resolve().parents[2]

TASKS_YAML = """\
tasks:
  - name: SendEmail
    parameters:
      type: object
      required: [userId, templateId]
      properties:
        userId: {type: integer, format: int32}
        templateId: {type: string}
    retryPolicy: {interval: 5m, maxAttempts: -1}
"""

# The README's Python step: enqueue with the typed runner, then a worker runs the queue empty.
QUICKSTART = """\
import asyncio, os
import psycopg
from anchor_py import TaskContext
from anchor_py.worker import Worker
from zgen import taskgen

class Executor:
    async def execute_send_email(self, ctx: TaskContext, params: taskgen.SendEmailParameters) -> None:
        print(f"task {ctx.task_id}: mail {params.template_id!r} to user {params.user_id}")

def make_executor() -> Executor:
    return Executor()

if __name__ == "__main__":
    DSN = os.environ["DATABASE_URL"]
    with psycopg.connect(DSN, autocommit=True) as conn:
        taskgen.TaskRunner(conn).run_send_email(taskgen.SendEmailParameters(user_id=42, template_id="welcome"))
    asyncio.run(Worker(DSN, Executor(), taskgen.TASKS).run_until_empty())
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv (no system site-packages) holding the built wheel with its dashboard extra."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(root / "dist"), str(REPO)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (root / "dist").glob("anchor_py-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=60)
    pip = root / "venv" / "bin" / "pip"
    subprocess.run([str(pip), "install", "--quiet", f"{wheel}[dashboard]"],
                   check=True, capture_output=True, timeout=240)
    return root / "venv"


@pytest.fixture
def database() -> Iterator[str]:
    """A new, empty database (no SQL core): installing it is part of the Quick start."""
    name = f"anchor_wheel_{os.getpid()}"
    with psycopg.connect(SERVER.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    try:
        yield SERVER.dsn(name)
    finally:
        with psycopg.connect(SERVER.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(condition: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {condition}")


def test_the_quick_start_runs_from_the_installed_wheel(venv: Path, database: str, tmp_path: Path) -> None:
    project = tmp_path / "myapp"
    (project / "api").mkdir(parents=True)
    (project / "api" / "tasks.yaml").write_text(TASKS_YAML)
    (project / "app.py").write_text(QUICKSTART)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(DATABASE_URL=database, PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}"
        return result

    where = run("python", "-c", "import anchor_py, importlib.util as u; print(anchor_py.__file__); "
                "print([name for name in ('tests', 'examples', 'benchmarks') if u.find_spec(name)])")
    assert where.stdout.splitlines() == [str(next(venv.glob("lib/python*/site-packages/anchor_py/__init__.py"))), "[]"]

    run("anchor", "generate")
    assert (project / "zgen" / "__init__.py").is_file()
    run("anchor", "install-sql", "--dsn", database)
    run("anchor", "register", "--dsn", database)
    quickstart = run("python", "app.py")
    assert "mail 'welcome' to user 42" in quickstart.stdout

    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(
            """select anchor.enqueue('SendEmail', '{"userId": 7, "templateId": "from-sql"}')""").fetchone()
        assert row is not None
        from_sql = row[0]

        worker = subprocess.Popen(["anchor", "worker", "--app", "app:make_executor", "--dsn", database],
                                  cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for("the worker to run the task enqueued from SQL", lambda: conn.execute(
                "select state from anchor.tasks where id = %s", (from_sql,)).fetchone() == ("succeeded",), 30)
        finally:
            worker.send_signal(signal.SIGTERM)
            out, err = worker.communicate(timeout=20)
        assert "mail 'from-sql' to user 7" in out, err

    listed = run("anchor", "tasks", "list", "--dsn", database)
    assert listed.stdout.count("SendEmail") == 2 and listed.stdout.count("succeeded") == 2, listed.stdout

    port = _free_port()
    dashboard = subprocess.Popen(["anchor", "dashboard", "--port", str(port), "--dsn", database],
                                 cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for("the dashboard to listen", lambda: _answers(port), 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
            assert "SendEmail" in response.read().decode()
    finally:
        dashboard.terminate()
        dashboard.communicate(timeout=20)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
