"""``manage.py anchor_worker``: runs a worker for settings.ANCHOR's executor until SIGTERM or SIGINT."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from anchor_py.contrib.django import database_alias, dsn, load_executor, task_set
from anchor_py.logs import configure_logging
from anchor_py.worker import Worker, WorkerConfig


class Command(BaseCommand):
    help = "Run an anchor-py worker for settings.ANCHOR['EXECUTOR'] until SIGTERM or SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", help="the DATABASES alias (default: settings.ANCHOR['DATABASE'])")
        parser.add_argument("--direct-database", metavar="ALIAS",
                            help="when the database goes through PgBouncer in transaction mode: a DATABASES alias "
                            "connecting directly, for LISTEN, hooks and maintenance (WorkerConfig.direct_dsn)")
        parser.add_argument("--concurrency", type=int, default=WorkerConfig.concurrency)
        parser.add_argument("--queues", help="comma-separated queues to serve (default: those of its tasks)")
        parser.add_argument("--log-format", choices=("text", "json"), default="text")
        parser.add_argument("--log-level", default="INFO")

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging(options["log_level"], options["log_format"])
        queues = [q.strip() for q in options["queues"].split(",") if q.strip()] if options["queues"] else None
        direct = dsn(options["direct_database"]) if options["direct_database"] else None
        config = WorkerConfig(concurrency=options["concurrency"], queues=queues, direct_dsn=direct)
        worker = Worker(dsn(database_alias(options["database"])), load_executor(), task_set(), config)
        # graceful on SIGTERM: stops claiming, lets running tasks finish within the grace, hands back the rest
        worker.run_sync()
