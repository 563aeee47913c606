"""The Django app that brings anchor-py's management commands (add ``anchor_py.contrib.django`` to INSTALLED_APPS)."""

from __future__ import annotations

from django.apps import AppConfig


class AnchorConfig(AppConfig):
    name = "anchor_py.contrib.django"
    label = "anchor"
    verbose_name = "anchor-py"
