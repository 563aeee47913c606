"""anchor_py.contrib.django with the example project (examples/django_project/) against a real database.

In-process, Django's ORM and an anchor-py enqueue share Django's connection: inside ``transaction.atomic()`` a
rollback leaves neither the row nor the task, a commit leaves both. As a user runs them (``python manage.py ...``
in a subprocess): anchor_install_sql installs the SQL core in the DATABASES database, anchor_register registers the
definitions, anchor_worker runs the enqueued task with the ORM and stops cleanly on SIGTERM."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from examples.zgen.taskgen import TASKS
from tests.integrations.servers import REPO

MANAGE = REPO / "examples" / "django_project" / "manage.py"


def rows(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(query, args).fetchall()


@pytest.fixture
def django_on(dsn: str) -> Iterator[str]:
    """Django configured with the example's settings, its default database pointed at this test's database
    (settings are configured once per process; the connection's target is switched per test)."""
    import django
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    if not settings.configured:
        from examples.django_project.project import settings as example

        settings.configure(**{name: getattr(example, name) for name in dir(example) if name.isupper()})
        django.setup()
    wrapper = connections["default"]
    wrapper.close()
    parts = conninfo_to_dict(dsn)
    wrapper.settings_dict.update(NAME=parts["dbname"], USER=parts.get("user", ""), PASSWORD=parts.get("password", ""),
                                 HOST=parts.get("host", ""), PORT=parts.get("port", ""))
    call_command("migrate", verbosity=0)
    call_command("anchor_register", stdout=io.StringIO())
    try:
        yield dsn
    finally:
        wrapper.close()


def test_an_atomic_block_that_rolls_back_leaves_neither_the_row_nor_the_task(django_on: str) -> None:
    from examples.django_project.shop.services import sign_up

    with pytest.raises(RuntimeError, match="aborted after the enqueue"):
        sign_up("ada@example.com", "Ada", fail_after_enqueue=True)
    assert rows(django_on, "select id from shop_customer") == []
    assert rows(django_on, "select id from anchor.tasks") == []


def test_an_atomic_block_that_commits_leaves_the_row_and_its_task(django_on: str) -> None:
    from examples.django_project.shop.services import sign_up

    customer, task_id = sign_up("ada@example.com", "Ada")
    assert rows(django_on, "select id, name, state, params from anchor.tasks") == [{
        "id": task_id, "name": "SendEmail", "state": "pending",
        "params": {"userId": customer.pk, "templateId": "welcome"},
    }]


def test_the_enqueue_is_refused_outside_an_atomic_block_where_it_could_not_roll_back(django_on: str) -> None:
    from anchor_py.contrib.django import connection, runner
    from anchor_py.runner import AutocommitConnectionError
    from examples.zgen import taskgen

    with pytest.raises(AutocommitConnectionError):
        runner(taskgen.TaskRunner).run_send_email_with_tx(
            connection(), taskgen.SendEmailParameters(user_id=1, template_id="welcome"))
    # run_x outside a transaction commits by itself
    task_id = runner(taskgen.TaskRunner).run_send_email(taskgen.SendEmailParameters(user_id=1, template_id="welcome"))
    assert rows(django_on, "select id from anchor.tasks") == [{"id": task_id}]


def manage(dsn: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(MANAGE), *args], env={**os.environ, "DATABASE_URL": dsn},
                          capture_output=True, text=True, timeout=timeout)


def test_the_management_commands_install_register_and_run_a_worker(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop schema anchor cascade")  # a database as Django alone left it

    assert manage(dsn, "migrate").returncode == 0
    installed = manage(dsn, "anchor_install_sql")
    assert installed.returncode == 0, installed.stderr
    names = [p.stem.split("_", 1)[1] for p in sorted((REPO / "sql" / "migrations").glob("[0-9]*.sql"))]
    assert installed.stdout.strip() == f"anchor-py SQL core on database 'default': applied {', '.join(names)}"
    assert [row["name"] for row in rows(dsn, "select name from anchor.schema_migrations order by version")] == names
    registered = manage(dsn, "anchor_register")
    assert registered.returncode == 0, registered.stderr
    assert f"registered {len(TASKS)} task definitions" in registered.stdout
    assert len(rows(dsn, "select name from anchor.task_definitions")) == len(TASKS)

    signed_up = manage(dsn, "shell", "-c", "from examples.django_project.shop.services import sign_up; "
                                           "print(sign_up('ada@example.com', 'Ada')[1])")
    assert signed_up.returncode == 0, signed_up.stderr
    task_id = int(signed_up.stdout.split()[-1])  # after the shell's own "N objects imported" line

    worker = subprocess.Popen([sys.executable, str(MANAGE), "anchor_worker", "--concurrency", "2"],
                              env={**os.environ, "DATABASE_URL": dsn},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while rows(dsn, "select state from anchor.tasks where id = %s", task_id) != [{"state": "succeeded"}]:
            assert worker.poll() is None and time.monotonic() < deadline, worker.communicate(timeout=10)[0]
            time.sleep(0.2)
        assert rows(dsn, "select task_id from shop_welcomeemail") == [{"task_id": task_id}]
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=30)[0]
        assert worker.returncode == 0, output
        assert rows(dsn, "select worker_id from anchor.workers") == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def test_the_signup_view_enqueues_with_its_row_and_refuses_a_duplicate(django_on: str) -> None:
    from django.test import Client

    client = Client()
    created = client.post("/signup", {"email": "ada@example.com", "name": "Ada"}, content_type="application/json")
    assert created.status_code == 201, created.content
    duplicate = client.post("/signup", {"email": "ada@example.com", "name": "Ada"}, content_type="application/json")
    assert duplicate.status_code == 409
    assert rows(django_on, "select id from anchor.tasks") == [{"id": created.json()["taskId"]}]
