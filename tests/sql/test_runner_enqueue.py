"""The generated runners against the real SQL core: rows land, overrides apply, transactions hold."""

import asyncio
import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from anchor_py_codegen import generate
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from anchor_py import queries
from anchor_py.runner import AutocommitConnectionError, OpenTransactionError
from anchor_py.taskcore import (
    InvalidOverride,
    with_delay,
    with_priority,
    with_queue,
    with_retry_policy,
    with_run_at,
    with_timeout,
    with_unique_tag,
)
from anchor_py.taskspec import TaskSet
from examples.zgen import taskgen

ROOT = Path(__file__).resolve().parents[2]
Conn = psycopg.Connection[dict[str, Any]]


def register(db: Conn, tasks: TaskSet) -> None:
    db.execute(queries.REGISTER_TASKS, tasks.registration())


@pytest.fixture
def guide_db(db: Conn) -> Conn:
    register(db, taskgen.TASKS)
    return db


def task_row(db: Conn, task_id: int) -> dict[str, Any]:
    row = db.execute("select * from anchor.tasks where id = %s", (task_id,)).fetchone()
    assert row is not None, f"task {task_id} is not in anchor.tasks"
    return row


def task_count(db: Conn) -> int:
    row = db.execute("select count(*) as n from anchor.tasks").fetchone()
    assert row is not None
    return int(row["n"])


def test_run_on_an_autocommit_connection_lands_params_with_yaml_names(guide_db: Conn) -> None:
    task_id = taskgen.TaskRunner(guide_db).run_send_email(
        taskgen.SendEmailParameters(user_id=7, template_id="welcome", variables={"name": "Ada"})
    )
    row = task_row(guide_db, task_id)
    assert (row["name"], row["state"]) == ("SendEmail", "pending")
    assert row["params"] == {"userId": 7, "templateId": "welcome", "variables": {"name": "Ada"}}
    assert (row["max_attempts"], row["retry_intervals"], row["timeout"]) == (
        -1,
        [timedelta(minutes=5)],
        timedelta(hours=1),
    )


def test_run_on_an_idle_connection_commits_by_itself(guide_db: Conn, dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        task_id = taskgen.TaskRunner(conn).run_process_order(taskgen.ProcessOrderParameters(order_id=1))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert task_row(guide_db, task_id)["params"] == {"orderId": 1}


def test_run_refuses_a_connection_with_a_transaction_open(guide_db: Conn, dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("select 1")
        with pytest.raises(OpenTransactionError, match="_with_tx"):
            taskgen.TaskRunner(conn).run_process_order(taskgen.ProcessOrderParameters(order_id=1))
    assert task_count(guide_db) == 0


def test_with_tx_joins_the_callers_transaction(guide_db: Conn, dsn: str) -> None:
    runner = taskgen.TaskRunner(guide_db)
    with psycopg.connect(dsn) as conn:
        conn.execute("create table orders (id int)")
        task_id = runner.run_process_order_with_tx(conn, taskgen.ProcessOrderParameters(order_id=5))
        assert task_count(guide_db) == 0  # not visible before the caller commits
        conn.execute("insert into orders values (5)")
        conn.commit()
    assert task_row(guide_db, task_id)["params"] == {"orderId": 5}


def test_a_rolled_back_transaction_leaves_no_task(guide_db: Conn, dsn: str) -> None:
    runner = taskgen.TaskRunner(guide_db)
    with psycopg.connect(dsn) as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            runner.run_process_order_with_tx(conn, taskgen.ProcessOrderParameters(order_id=5))
            raise RuntimeError("the handler failed after enqueueing")
        runner.run_process_order_with_tx(conn, taskgen.ProcessOrderParameters(order_id=6))
        conn.rollback()
    assert task_count(guide_db) == 0


def test_with_tx_refuses_an_autocommit_connection(guide_db: Conn) -> None:
    with pytest.raises(AutocommitConnectionError, match="autocommit"):
        taskgen.TaskRunner(guide_db).run_process_order_with_tx(guide_db, taskgen.ProcessOrderParameters(order_id=1))
    assert task_count(guide_db) == 0


def test_overrides_reach_the_row(guide_db: Conn) -> None:
    runner = taskgen.TaskRunner(guide_db)
    before = datetime.now(UTC)
    task_id = runner.run_send_email(
        taskgen.SendEmailParameters(user_id=1, template_id="w"),
        with_retry_policy("1m,2m", 3),
        with_timeout("30m"),
        with_priority(-3),
        with_queue("emails"),
        with_delay("10m"),
    )
    row = task_row(guide_db, task_id)
    assert (row["retry_intervals"], row["max_attempts"]) == ([timedelta(minutes=1), timedelta(minutes=2)], 3)
    assert (row["timeout"], row["priority"], row["queue"]) == (timedelta(minutes=30), -3, "emails")
    assert before + timedelta(minutes=9) < row["run_at"] < before + timedelta(minutes=11)
    run_at = datetime(2031, 1, 1, tzinfo=UTC)
    later = runner.run_send_email(taskgen.SendEmailParameters(user_id=1, template_id="w"), with_run_at(run_at))
    assert task_row(guide_db, later)["run_at"] == run_at


def test_another_tasks_parameters_are_a_type_error_naming_both_models(guide_db: Conn, dsn: str) -> None:
    notification = taskgen.SendNotificationParameters.model_construct()
    expected = "task SendEmail takes SendEmailParameters, got SendNotificationParameters"
    runner = taskgen.TaskRunner(guide_db)
    with pytest.raises(TypeError, match=expected):
        runner.run_send_email(notification)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=expected):
        runner.run_send_email_many([taskgen.SendEmailParameters(user_id=1, template_id="w"), notification])  # type: ignore[list-item]

    class AppRunner(taskgen.TaskRunner):
        """A subclass in the application's own module still knows the generated models."""

    with pytest.raises(TypeError, match=expected):
        AppRunner(guide_db).run_send_email(notification)  # type: ignore[arg-type]

    async def run_async() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await taskgen.AsyncTaskRunner(conn).run_send_email(notification)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match=expected):
        asyncio.run(run_async())
    assert task_count(guide_db) == 0


def test_a_duplicate_unique_tag_returns_the_live_tasks_id(guide_db: Conn) -> None:
    runner = taskgen.TaskRunner(guide_db)
    params = taskgen.SendEmailParameters(user_id=1, template_id="daily")
    first = runner.run_send_email(params, with_unique_tag("user-1-daily"))
    assert runner.run_send_email(params, with_unique_tag("user-1-daily")) == first
    assert task_count(guide_db) == 1


def test_many_enqueues_in_order_in_one_call(guide_db: Conn) -> None:
    runner = taskgen.TaskRunner(guide_db)
    ids = runner.run_process_order_many(
        [taskgen.ProcessOrderParameters(order_id=n) for n in (3, 1, 2)], with_priority(4)
    )
    assert [task_row(guide_db, task_id)["params"]["orderId"] for task_id in ids] == [3, 1, 2]
    assert {task_row(guide_db, task_id)["priority"] for task_id in ids} == {4}
    assert runner.run_process_order_many([]) == []
    with pytest.raises(InvalidOverride, match="with_unique_tag"):
        runner.run_process_order_many([taskgen.ProcessOrderParameters(order_id=1)], with_unique_tag("t"))


def test_a_connection_pool_works_and_commits(guide_db: Conn, dsn: str) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        task_id = taskgen.TaskRunner(pool).run_delete_opaque_key(taskgen.DeleteOpaqueKeyParameters(key_id=2**40))
    assert task_row(guide_db, task_id)["params"] == {"keyID": 2**40}


def test_async_runner_with_connection_pool_and_transaction(guide_db: Conn, dsn: str) -> None:
    async def scenario() -> list[int]:
        params = taskgen.SendNotificationParameters(user_id=2, message="hi", priority="high")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            runner = taskgen.AsyncTaskRunner(conn)
            plain = await runner.run_send_notification(params)
            with pytest.raises(AutocommitConnectionError):
                await runner.run_send_notification_with_tx(conn, params)
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            runner = taskgen.AsyncTaskRunner(conn)
            await runner.run_send_notification_with_tx(conn, params)
            await conn.rollback()
            kept = await runner.run_send_notification_with_tx(conn, params)
            await conn.commit()
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
            many = await taskgen.AsyncTaskRunner(pool).run_send_notification_many([params, params])
        return [plain, kept, *many]

    ids = asyncio.run(scenario())
    assert task_count(guide_db) == 4
    assert all(task_row(guide_db, task_id)["params"]["priority"] == "high" for task_id in ids)


def load_every_type(tmp_path: Path) -> ModuleType:
    source = generate((ROOT / "tests" / "golden" / "every_type.yaml").read_text(), "api/tasks.yaml").source
    path = tmp_path / "every_type_runner_taskgen.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def test_the_sql_core_accepts_what_the_models_accept_for_every_type(db: Conn, tmp_path: Path) -> None:
    every_type = load_every_type(tmp_path)
    register(db, every_type.TASKS)
    params = every_type.ImportCatalogParameters.model_validate(
        {
            "supplierId": 2**62,
            "batchSize": 10000,
            "ratio": 0.5,
            "weight": 3,
            "dryRun": False,
            "source": {"url": "https://example.com/feed", "credentials": {"user": "u", "token": "t"}},
            "items": [{"sku": "a", "quantity": 0, "unit": "litre", "tags": [], "attributes": {"k": [1]}}],
            "scores": [-(2**31), 2**31 - 1],
            "matrix": [[1.5, 2], []],
            "level": 3,
            "effectiveOn": "2024-02-29",
            "notBefore": "2024-05-01T08:00:00.123456-05:30",
            "metadata": {"a": None},
            "anything": [1, "two", None],
            "class": "c",
            "model_dump": "m",
            "user-name": "n",
            "2fa": True,
        }
    )
    task_id = every_type.TaskRunner(db).run_import_catalog(params)
    stored = task_row(db, task_id)
    assert every_type.ImportCatalogParameters.model_validate(stored["params"]) == params
    digest = every_type.TaskRunner(db).run_nightly_digest(
        every_type.NightlyDigestParameters(audience="everyone", day="2024-12-31")
    )
    assert task_row(db, digest)["params"] == {"audience": "everyone", "day": "2024-12-31"}
