"""The example's models: a customer, and the welcome email the SendEmail task records when it runs."""

from __future__ import annotations

from django.db import models


class Customer(models.Model):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=200)


class WelcomeEmail(models.Model):
    task_id = models.BigIntegerField(unique=True)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE)
