"""The example's executor: SendEmail records the welcome email with the Django ORM.

A plain ``def`` executor runs in one of the worker's threads, where the ORM opens the thread's own connection.
``manage.py anchor_worker`` runs it (settings.ANCHOR["EXECUTOR"])."""

from __future__ import annotations

from django.db import close_old_connections

from anchor_py import TaskContext
from examples.django_project.shop.models import WelcomeEmail
from examples.zgen import taskgen


class ShopExecutor:
    def execute_send_email(self, ctx: TaskContext, params: taskgen.SendEmailParameters) -> None:
        close_old_connections()  # as Django does around a request: drop a connection that went stale
        WelcomeEmail.objects.get_or_create(task_id=ctx.task_id, defaults={"customer_id": params.user_id})


def make_executor() -> ShopExecutor:
    return ShopExecutor()
