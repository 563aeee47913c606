"""The web app's executor: the guide's examples from examples/app.py, plus the cron task ProcessDailyReports.

``anchor worker --app examples.webapp.tasks:make_executor`` runs it as a separate process; the web app
(examples/webapp/app.py) starts the same executor in its lifespan unless told not to.
"""

from __future__ import annotations

import os

from anchor_py import TaskContext
from examples.app import SCHEMA as GUIDE_SCHEMA
from examples.app import Executor as GuideExecutor
from examples.zgen import taskgen

# the guide's tables (examples.*) and the web app's own
SCHEMA = (
    GUIDE_SCHEMA
    + """
create table if not exists examples.users (
    id int generated always as identity primary key,
    email text not null unique,
    name text not null
);
create table if not exists examples.daily_reports (
    report_date date primary key, task_id bigint not null, scheduled_at timestamptz
);
"""
)


class WebappExecutor(GuideExecutor):
    """The guide's executor (examples/app.py) and the daily reports of the guide's example 2."""

    async def execute_process_daily_reports(
        self, ctx: TaskContext, params: taskgen.ProcessDailyReportsParameters
    ) -> None:
        # params.date is a datetime.date, filled by the cron loop from the fire time
        await self._write(
            "insert into examples.daily_reports values (%s, %s, %s) on conflict (report_date) do nothing",
            (params.date, ctx.task_id, ctx.scheduled_at),
        )


def make_executor() -> WebappExecutor:
    """`anchor worker --app examples.webapp.tasks:make_executor` (DSN from $DATABASE_URL)."""
    from anchor_py.database import resolve_dsn

    return WebappExecutor(resolve_dsn(os.environ.get("DATABASE_URL"), announce=False))
