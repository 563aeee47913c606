"""anchor-py in a Django project (psycopg 3 backend): the database and the tasks come from Django's settings.

    INSTALLED_APPS = [..., "anchor_py.contrib.django"]
    ANCHOR = {
        "TASKGEN": "myproject.zgen.taskgen",          # the generated module (anchor generate)
        "EXECUTOR": "myproject.tasks:make_executor",  # what `manage.py anchor_worker` runs
        "DATABASE": "default",                        # the DATABASES alias (default: "default")
    }

    from django.db import transaction
    from anchor_py.contrib.django import connection, runner

    with transaction.atomic():
        user = User.objects.create(email=email)
        runner(taskgen.TaskRunner).run_send_email_with_tx(connection(), params)  # commits or rolls back with user

The runner works on the psycopg connection under Django's own, so ``run_x_with_tx`` joins the transaction of
``transaction.atomic()`` (no ``on_commit`` needed: a rollback removes the task). Outside an atomic block Django's
connection is in autocommit mode: ``run_x`` commits at once and ``run_x_with_tx`` is refused.

Management commands: ``anchor_install_sql``, ``anchor_register``, ``anchor_worker``.
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo

from anchor_py.runner import TaskRunnerBase
from anchor_py.taskspec import TaskSet

__all__ = ["connection", "database_alias", "dsn", "load_executor", "runner", "task_set"]

RunnerT = TypeVar("RunnerT", bound=TaskRunnerBase)

# OPTIONS keys of Django's PostgreSQL backend that are not libpq connection parameters
_DJANGO_ONLY_OPTIONS = {"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory", "context"}


def _anchor_settings() -> dict[str, Any]:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    value = getattr(settings, "ANCHOR", {})
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"settings.ANCHOR must be a dict, got {type(value).__name__}")
    return value


def _required(key: str) -> str:
    from django.core.exceptions import ImproperlyConfigured

    value = _anchor_settings().get(key)
    if not isinstance(value, str) or not value:
        raise ImproperlyConfigured(f'settings.ANCHOR["{key}"] is missing (see anchor_py.contrib.django)')
    return value


def database_alias(using: str | None = None) -> str:
    """``using``, else ``settings.ANCHOR["DATABASE"]``, else ``"default"``."""
    return using or str(_anchor_settings().get("DATABASE") or "default")


def dsn(using: str | None = None) -> str:
    """A libpq connection string for the DATABASES entry (for the worker and the migrations, which open their
    own connections)."""
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections

    alias = database_alias(using)
    wrapper = connections[alias]
    if wrapper.vendor != "postgresql":
        raise ImproperlyConfigured(f"DATABASES[{alias!r}] is {wrapper.vendor}: anchor-py needs PostgreSQL")
    entry = wrapper.settings_dict
    options = {k: v for k, v in (entry.get("OPTIONS") or {}).items() if k not in _DJANGO_ONLY_OPTIONS}
    params = {"dbname": entry.get("NAME"), "user": entry.get("USER"), "password": entry.get("PASSWORD"),
              "host": entry.get("HOST"), "port": entry.get("PORT")}
    return make_conninfo(**{k: v for k, v in {**params, **options}.items() if v not in (None, "")})


def connection(using: str | None = None) -> psycopg.Connection[Any]:
    """The psycopg connection under Django's connection ``using`` (opened if needed): the ``tx`` of
    ``run_x_with_tx`` inside ``transaction.atomic()``."""
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections

    alias = database_alias(using)
    wrapper = connections[alias]
    wrapper.ensure_connection()
    raw = wrapper.connection
    if not isinstance(raw, psycopg.Connection):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] runs on {type(raw).__module__}: anchor-py needs Django's psycopg 3 backend "
            "(pip install 'psycopg[binary]', and uninstall psycopg2 so Django picks psycopg 3)"
        )
    return raw


def runner(runner_type: type[RunnerT], using: str | None = None) -> RunnerT:
    """The generated ``TaskRunner`` on Django's connection ``using``."""
    return runner_type(connection(using))


def task_set() -> TaskSet:
    """The ``TASKS`` of the generated module ``settings.ANCHOR["TASKGEN"]``."""
    from django.core.exceptions import ImproperlyConfigured

    module_name = _required("TASKGEN")
    tasks = getattr(importlib.import_module(module_name), "TASKS", None)
    if not isinstance(tasks, TaskSet):
        raise ImproperlyConfigured(f'settings.ANCHOR["TASKGEN"]: {module_name} has no TASKS; is it generated?')
    return tasks


def load_executor() -> object:
    """The executor ``settings.ANCHOR["EXECUTOR"]`` (``module:factory``) makes."""
    from django.core.exceptions import ImproperlyConfigured

    reference = _required("EXECUTOR")
    module_name, _, factory_name = reference.partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name, None) if factory_name else None
    if not callable(factory):
        raise ImproperlyConfigured(f'settings.ANCHOR["EXECUTOR"] = {reference!r}: expected module:factory')
    return factory()
