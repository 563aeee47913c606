"""WorkerConfig: every duration is a timedelta, checked when the config is made."""

from __future__ import annotations

from datetime import timedelta

import pytest

from anchor_py.defaults import HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT
from anchor_py.worker import WorkerConfig


def test_the_heartbeat_defaults_are_the_shared_ones() -> None:
    config = WorkerConfig()
    assert (config.heartbeat_interval, config.heartbeat_timeout) == (HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT)


@pytest.mark.parametrize("field", ["poll_interval", "heartbeat_timeout", "shutdown_grace", "hook_timeout",
                                   "completion_flush_interval", "deadline_grace", "rescue_interval"])
def test_a_number_of_seconds_is_refused_naming_the_field(field: str) -> None:
    with pytest.raises(TypeError, match=f"WorkerConfig.{field} must be a timedelta .* got int 30"):
        WorkerConfig(**{field: 30})  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "message"), [
    ({"poll_interval": timedelta(0)}, "poll_interval must be above zero"),
    ({"shutdown_grace": timedelta(seconds=-1)}, "shutdown_grace must not be negative"),
    ({"heartbeat_interval": timedelta(seconds=20)}, "heartbeat_timeout must be longer than heartbeat_interval"),
    ({"completion_batch_size": 0}, "completion_batch_size must be at least 1"),
])
def test_impossible_values_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerConfig(**changes)  # type: ignore[arg-type]
