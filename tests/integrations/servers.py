"""Helpers of the integration tests that start a server process (uvicorn, Django's manage.py, PgBouncer)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_answers(process: subprocess.Popen[str], answers: Callable[[], bool], timeout: float = 30) -> None:
    """Waits until ``answers()`` is true (connection errors count as not yet); fails with the process's output
    when it exits or the timeout passes first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if answers():
                return
        except (OSError, httpx.TransportError, psycopg.OperationalError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{process.args!r} did not start:\n{process.communicate()[0]}")
        time.sleep(0.2)
