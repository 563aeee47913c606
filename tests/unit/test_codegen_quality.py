"""The generated module passes ruff check and mypy --strict, and types users' code correctly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from anchor_py_codegen import generate

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

USAGE = """
from datetime import timedelta
from typing import Any

import psycopg

from anchor_py.taskcore import TaskContext, with_retry_policy, with_timeout
from taskgen import (
    AsyncTaskRunner,
    ExecutorInterface,
    ImportCatalogParameters,
    ImportCatalogResult,
    NightlyDigestParameters,
    PingParameters,
    SyncExecutorInterface,
    TaskRunner,
)


class Executor:
    async def execute_import_catalog(self, ctx: TaskContext, params: ImportCatalogParameters) -> ImportCatalogResult:
        print(params.supplier_id + 1, params.source.url.upper(), [item.sku for item in params.items])
        return ImportCatalogResult(imported=len(params.items), skipped=[])

    async def on_import_catalog_failed(
        self, ctx: TaskContext, task_id: int, params: ImportCatalogParameters, tx: psycopg.AsyncConnection[Any]
    ) -> None:
        await tx.execute("select 1")

    async def execute_ping(self, ctx: TaskContext, params: PingParameters) -> None:
        pass

    async def execute_nightly_digest(self, ctx: TaskContext, params: NightlyDigestParameters) -> None:
        print(params.day.isoformat(), params.audience)


class SyncExecutor:
    def execute_import_catalog(self, ctx: TaskContext, params: ImportCatalogParameters) -> dict[str, Any]:
        return {"imported": 0, "skipped": []}

    def on_import_catalog_failed(
        self, ctx: TaskContext, task_id: int, params: ImportCatalogParameters, tx: psycopg.Connection[Any]
    ) -> None:
        pass

    def execute_ping(self, ctx: TaskContext, params: PingParameters) -> None:
        pass

    def execute_nightly_digest(self, ctx: TaskContext, params: NightlyDigestParameters) -> None:
        pass


executor: ExecutorInterface = Executor()
sync_executor: SyncExecutorInterface = SyncExecutor()


def enqueue(conn: psycopg.Connection[Any]) -> list[int]:
    runner = TaskRunner(conn)
    first: int = runner.run_ping(PingParameters(), with_timeout("30m"))
    second: int = runner.run_ping_with_tx(conn, PingParameters(), with_retry_policy("1m,2m", True))
    return [first, second, *runner.run_ping_many([PingParameters(), PingParameters()])]


async def enqueue_async(conn: psycopg.AsyncConnection[Any]) -> int:
    return await AsyncTaskRunner(conn).run_ping(PingParameters())


def wait(conn: psycopg.Connection[Any], params: ImportCatalogParameters) -> int:
    runner = TaskRunner(conn)
    runner.wait_ping(runner.run_ping(PingParameters()), timeout=5)
    result: ImportCatalogResult | None = runner.run_import_catalog_and_wait(params, timeout=timedelta(seconds=5))
    return 0 if result is None else result.imported + len(runner.wait(1).state)


async def wait_async(conn: psycopg.AsyncConnection[Any]) -> ImportCatalogResult | None:
    return await AsyncTaskRunner(conn).wait_import_catalog(1)
"""

WRONG_USAGE = """
from taskgen import PingParameters, TaskRunner, NightlyDigestParameters

def misuse(runner: TaskRunner) -> None:
    runner.run_ping(NightlyDigestParameters(audience="everyone", day="2024-01-01"))
"""

WRONG_RESULT = """
from taskgen import ExecutorInterface, ImportCatalogParameters, NightlyDigestParameters, PingParameters
from anchor_py.taskcore import TaskContext


class Executor:
    async def execute_import_catalog(self, ctx: TaskContext, params: ImportCatalogParameters) -> str:
        return "done"

    async def on_import_catalog_failed(
        self, ctx: TaskContext, task_id: int, params: ImportCatalogParameters, tx: object
    ) -> None:
        pass

    async def execute_ping(self, ctx: TaskContext, params: PingParameters) -> int:
        return 1

    async def execute_nightly_digest(self, ctx: TaskContext, params: NightlyDigestParameters) -> None:
        pass


executor: ExecutorInterface = Executor()
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's project holding the module generated from the every-type file."""
    directory = tmp_path_factory.mktemp("project")
    yaml_path = ROOT / "tests" / "golden" / "every_type.yaml"
    (directory / "taskgen.py").write_text(generate(yaml_path.read_text(encoding="utf-8"), "api/tasks.yaml").source)
    (directory / "usage.py").write_text(USAGE)
    (directory / "wrong_usage.py").write_text(WRONG_USAGE)
    (directory / "wrong_result.py").write_text(WRONG_RESULT)
    return directory


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MYPYPATH": f"{ROOT}{os.pathsep}{ROOT / 'codegen'}"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=environment, timeout=300)


def test_ruff_check_passes_with_the_projects_rules(project: Path) -> None:
    result = run(
        [
            str(BIN / "ruff"),
            "check",
            "--isolated",
            "--select",
            "E,F,W,I,UP,B,SIM",
            "--target-version",
            "py310",
            "taskgen.py",
        ],
        project,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_would_change_nothing(project: Path) -> None:
    result = run([str(BIN / "ruff"), "format", "--isolated", "--check", "taskgen.py"], project)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes_on_the_module_and_on_code_using_it(project: Path) -> None:
    result = run([str(BIN / "mypy"), "--strict", "--no-incremental", "taskgen.py", "usage.py"], project)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_catches_the_wrong_parameters_model(project: Path) -> None:
    result = run([str(BIN / "mypy"), "--strict", "--no-incremental", "wrong_usage.py"], project)
    assert result.returncode == 1
    assert 'Argument 1 to "run_ping" of "TaskRunner" has incompatible type "NightlyDigestParameters"' in result.stdout


def test_mypy_catches_an_executor_returning_the_wrong_type(project: Path) -> None:
    result = run([str(BIN / "mypy"), "--strict", "--no-incremental", "wrong_result.py"], project)
    assert result.returncode == 1
    assert 'Incompatible types in assignment (expression has type "Executor"' in result.stdout
    assert "is missing" not in result.stdout, result.stdout  # the return types are the only conflicts
    assert "-> Coroutine[Any, Any, ImportCatalogResult | dict[str, Any]]" in result.stdout
    assert "params: ImportCatalogParameters) -> Coroutine[Any, Any, str]" in result.stdout
    assert "params: PingParameters) -> Coroutine[Any, Any, int]" in result.stdout
