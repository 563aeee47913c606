"""Defaults that several parts of anchor-py must agree on, kept in one place.

A worker heartbeats every ``HEARTBEAT_INTERVAL``; the rescuer, the dashboard, ``anchor stats`` and the
SQL core's ``heartbeat`` release rule all treat a worker as gone once its last heartbeat is older than
``HEARTBEAT_TIMEOUT``. If these disagreed, an operator would see a worker called alive that the rescuer
already treats as dead.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = ["HEARTBEAT_INTERVAL", "HEARTBEAT_TIMEOUT"]

HEARTBEAT_INTERVAL = timedelta(seconds=5)
HEARTBEAT_TIMEOUT = timedelta(seconds=20)
