"""``manage.py anchor_register``: registers the task definitions of settings.ANCHOR['TASKGEN']."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from anchor_py import queries
from anchor_py.contrib.django import connection, database_alias, task_set


class Command(BaseCommand):
    help = "Register the task definitions of settings.ANCHOR['TASKGEN'] in the database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", help="the DATABASES alias (default: settings.ANCHOR['DATABASE'])")

    def handle(self, *args: Any, **options: Any) -> None:
        alias = database_alias(options["database"])
        tasks = task_set()
        conn = connection(alias)
        with conn.transaction():
            conn.execute(queries.REGISTER_TASKS, tasks.registration())
        count = len(list(tasks))
        self.stdout.write(f"registered {count} task definition{'' if count == 1 else 's'} "
                          f"(version {tasks.version}) on database {alias!r}")
