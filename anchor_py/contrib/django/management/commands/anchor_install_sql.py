"""``manage.py anchor_install_sql``: applies anchor-py's SQL migrations to the Django database."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from anchor_py.contrib.django import database_alias, dsn
from anchor_py.migrate import install


class Command(BaseCommand):
    help = "Apply the anchor-py SQL core's migrations to the database of settings.ANCHOR['DATABASE']."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", help="the DATABASES alias (default: settings.ANCHOR['DATABASE'])")
        parser.add_argument("--roles", action="store_true", help="also create the anchor_* roles and grants")

    def handle(self, *args: Any, **options: Any) -> None:
        alias = database_alias(options["database"])
        applied = install(dsn(alias), roles=options["roles"])
        names = ", ".join(migration.name for migration in applied) or "none, already up to date"
        self.stdout.write(f"anchor-py SQL core on database {alias!r}: applied {names}")
