"""Signing a customer up: the row and its welcome email task commit together, or neither does."""

from __future__ import annotations

from django.db import transaction

from anchor_py.contrib.django import connection, runner
from examples.django_project.shop.models import Customer
from examples.zgen import taskgen


def sign_up(email: str, name: str, *, fail_after_enqueue: bool = False) -> tuple[Customer, int]:
    with transaction.atomic():
        customer = Customer.objects.create(email=email, name=name)
        task_id = runner(taskgen.TaskRunner).run_send_email_with_tx(
            connection(), taskgen.SendEmailParameters(user_id=customer.pk, template_id="welcome")
        )
        if fail_after_enqueue:  # the rollback takes the task with the customer
            raise RuntimeError("sign-up aborted after the enqueue")
    return customer, task_id
