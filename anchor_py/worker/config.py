"""How a worker runs (``WorkerConfig``) and the maintenance services it starts by default."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import timedelta

from anchor_py.defaults import HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT
from anchor_py.pruner import pruner_factory
from anchor_py.rescuer import Rescuer, RescuerConfig
from anchor_py.services import ServiceFactory

__all__ = ["WorkerConfig", "default_services"]

# Durations that must be above zero: a zero poll, heartbeat or hook timeout would spin or never run.
_POSITIVE = ("poll_interval", "heartbeat_interval", "heartbeat_timeout", "rescue_interval", "hook_timeout")


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs. Every duration is a ``timedelta``.

    ``disable`` is the guide's switch: a disabled worker starts nothing. ``heartbeat_timeout``
    and ``rescue_interval`` decide how fast the tasks of a killed worker run again elsewhere
    (within about their sum). ``services`` replaces the default maintenance services
    (rescuer, pruner, and cron when installed); each entry builds one service on the worker's pool.
    """

    disable: bool = False
    concurrency: int = 10
    poll_interval: timedelta = timedelta(seconds=1)
    queues: Sequence[str] | None = None
    heartbeat_interval: timedelta = HEARTBEAT_INTERVAL
    heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT
    rescue_interval: timedelta = timedelta(seconds=5)
    deadline_grace: timedelta = timedelta(seconds=30)
    max_rescues: int = 5
    shutdown_grace: timedelta = timedelta(seconds=10)
    hook_attempts: int = 5
    hook_timeout: timedelta = timedelta(seconds=60)
    completion_batch_size: int = 200
    completion_flush_interval: timedelta = timedelta(milliseconds=2)
    max_abandoned_threads: int = 10
    worker_id: str | None = None
    register_tasks: bool = True
    services: Sequence[ServiceFactory] | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "timedelta" and not isinstance(value, timedelta):
                raise TypeError(
                    f"WorkerConfig.{field.name} must be a timedelta (e.g. timedelta(seconds=5)), "
                    f"got {type(value).__name__} {value!r}"
                )
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.hook_attempts < 1:
            raise ValueError(f"hook_attempts must be at least 1, got {self.hook_attempts}")
        if self.completion_batch_size < 1:
            raise ValueError(f"completion_batch_size must be at least 1, got {self.completion_batch_size}")
        for name in _POSITIVE:
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be above zero, got {getattr(self, name)}")
        for name in ("deadline_grace", "shutdown_grace", "completion_flush_interval"):
            if getattr(self, name) < timedelta(0):
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval, or live workers look dead")
        if self.queues is not None:
            object.__setattr__(self, "queues", tuple(self.queues))


def default_services(config: WorkerConfig) -> list[ServiceFactory]:
    """The rescuer and the pruner (retention: 7 days succeeded, 30 days failed) always; the cron
    scheduler when ``anchor_py.cron`` is installed."""
    rescuer_config = RescuerConfig(
        interval=config.rescue_interval,
        heartbeat_timeout=config.heartbeat_timeout,
        deadline_grace=config.deadline_grace,
        max_rescues=config.max_rescues,
        max_hook_attempts=config.hook_attempts,
    )
    factories: list[ServiceFactory] = [lambda pool: Rescuer(pool, rescuer_config), pruner_factory()]
    try:
        from anchor_py.cron import CronService
    except ImportError:  # cron is optional: a build without it still runs tasks
        return factories
    factories.append(lambda pool: CronService(pool))
    return factories
