"""The worker: claims tasks, runs the user's executor, reports outcomes, runs onFailed hooks.

``Worker`` wires the parts, each owning its state, and runs their lifecycle:

- ``ClaimLoop`` (claims.py): capacity, claims and wake-ups, on the ``ClaimPool`` (the hot path);
- ``Executions`` (execution.py) and ``UserCodeRunner`` (usercode.py): running executor methods under
  timeouts, in threads for sync code, interruptible by cancel requests and shutdown;
- ``CompletionBuffer`` (completions.py): successes written in batches, with the next claim when one comes;
- ``HookRunner`` (hooks.py): final failures and their onFailed hooks, on hook connections of their own;
- ``Liveness`` (liveness.py): heartbeat and LISTEN, each on a connection of its own;
- the maintenance services (rescuer, pruner, cron) on a pool of their own.

The state machine lives in the SQL core (``anchor.claim/complete/fail/finish_failure/fail_hook/
hand_back``); every call is fenced by (id, fence token, worker), so retrying a call after a lost connection
is always safe: a call that already took effect comes back 'stale'.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from anchor_py import queries
from anchor_py.db import fetch_one, retrying
from anchor_py.services import Service, ServiceFactory
from anchor_py.taskspec import TaskSet
from anchor_py.tracing import worker_spans
from anchor_py.worker.claims import ClaimLoop
from anchor_py.worker.completions import CompletionBuffer
from anchor_py.worker.config import WorkerConfig, default_services
from anchor_py.worker.connections import ClaimPool, autocommit_settings, one_line, until_stopped
from anchor_py.worker.execution import Executions
from anchor_py.worker.hooks import HookRunner
from anchor_py.worker.job import InFlight, handlers_for
from anchor_py.worker.liveness import Liveness, describe
from anchor_py.worker.startup import DatabaseSetupError, wait_for_database
from anchor_py.worker.usercode import AbandonedThreadsError, UserCodeRunner

if TYPE_CHECKING:  # prometheus-client is an optional extra: metrics are imported only by who passes them
    from anchor_py.metrics import WorkerMetrics

__all__ = ["Worker"]

log = logging.getLogger("anchor_py.worker")

# Seconds the shutdown may spend writing completions, handing tasks back and deregistering, in all: enough
# to ride out a database restart, short enough that a supervisor's stop timeout is not reached when the
# database is gone (what is not written then, the rescuer recovers).
_SHUTDOWN_DATABASE_BUDGET = 3.0


class Worker:
    """Runs the tasks of ``tasks`` that ``executor`` implements.

    ``await worker.run()`` until ``await worker.stop()`` (or SIGTERM/SIGINT with
    ``run_sync()``); ``run_until_empty()`` drains due work and returns (tests, scripts).
    """

    def __init__(
        self,
        dsn_or_pool: str | AsyncConnectionPool[Any],
        executor: object,
        tasks: TaskSet,
        config: WorkerConfig | None = None,
        services: Sequence[ServiceFactory] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """``metrics``: record executions, hooks and claim sizes into these (``anchor_py.metrics.WORKER``
        is what ``anchor worker --metrics-port`` serves); None records nothing."""
        self.config = config = config or WorkerConfig()
        self.metrics = metrics
        self.tasks = tasks
        self.executor = executor
        self._pool = ClaimPool(dsn_or_pool, config.concurrency, pooled=config.direct_dsn is not None)
        self._conninfo = self._pool.conninfo
        # what needs a session of its own (LISTEN, hook transactions, the services' locks); see WorkerConfig
        self._direct_conninfo = config.direct_dsn or self._conninfo
        self.worker_id = worker_id = config.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        handlers = handlers_for(executor, tasks)
        self._task_names = sorted(handlers)
        self._served_queues = sorted(
            set(config.queues) if config.queues is not None
            else {str(handlers[name].spec.definition.get("queue") or "default") for name in self._task_names}
        )
        if services is not None:
            self._service_factories: list[ServiceFactory] = list(services)
        elif config.services is not None:
            self._service_factories = list(config.services)
        else:
            self._service_factories = default_services(config)
        self._service_pool: AsyncConnectionPool[Any] | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._fatal_error: BaseException | None = None
        self._forced = False
        self._shutdown_step: asyncio.Future[Any] | None = None

        # OpenTelemetry spans, or None (not installed, or no SDK configured): decided once, here
        spans = worker_spans()
        inflight = self._inflight = InFlight()
        self._usercode = UserCodeRunner(config.concurrency, config.max_abandoned_threads, self._on_fatal)
        self._completions = CompletionBuffer(
            self._pool, inflight, worker_id, config.completion_batch_size,
            config.completion_flush_interval.total_seconds(), metrics,
        )
        self._hooks = HookRunner(
            self._direct_conninfo, worker_id, concurrency=config.concurrency,
            hook_timeout=config.hook_timeout.total_seconds(), hook_attempts=config.hook_attempts, pool=self._pool,
            usercode=self._usercode, inflight=inflight, metrics=metrics, spans=spans,
        )
        self._executions = Executions(
            worker_id, hook_timeout=config.hook_timeout, pool=self._pool, usercode=self._usercode,
            completions=self._completions, hooks=self._hooks, inflight=inflight, metrics=metrics, spans=spans,
        )
        self._liveness = Liveness(
            self._conninfo, self._direct_conninfo, worker_id, pooled=self._pool.pooled,
            interval=config.heartbeat_interval, timeout=config.heartbeat_timeout,
            info=describe(config.concurrency, self._task_names, self._served_queues), queues=self._served_queues,
            held_ids=self._held_ids, wake=inflight.wake_event, cancel=self._executions.cancel_requested,
        )
        self._claims = ClaimLoop(
            worker_id, concurrency=config.concurrency, poll_interval=config.poll_interval, handlers=handlers,
            queues=config.queues, hook_timeout=config.hook_timeout, hook_attempts=config.hook_attempts,
            pool=self._pool, inflight=inflight, completions=self._completions, executions=self._executions,
            hooks=self._hooks, liveness=self._liveness, stopping=self._stopping, metrics=metrics, spans=spans,
        )

    # --- public API ------------------------------------------------------------------

    @property
    def abandoned_threads(self) -> int:
        """Sync executions and hooks that overran their timeout and whose threads still run."""
        return self._usercode.abandoned_threads

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Run until stop() (or a signal, with install_signal_handlers), then shut down gracefully.

        Waits for the database while it cannot be reached (a stop request ends the wait); raises
        DatabaseSetupError at once when it cannot serve a worker until its setup changes (no such database
        or role, authentication, the SQL core missing or older, a role without anchor_worker). With signal
        handlers, a second SIGTERM/SIGINT stops at once instead of waiting for running tasks.
        """
        if self.config.disable:
            log.info("worker disabled (WorkerConfig.disable): not starting")
            return
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if install_signal_handlers else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig.name)
        try:
            await self._run()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        if self._fatal_error is not None:
            raise self._fatal_error

    def run_sync(self) -> None:
        """Run in a new event loop until SIGTERM/SIGINT; for plain scripts."""
        asyncio.run(self.run(install_signal_handlers=True))

    async def stop(self) -> None:
        """Stop claiming, let running tasks finish (up to shutdown_grace), hand the rest back."""
        self._request_stop("stop()")
        if self._running:
            await self._stopped.wait()

    async def run_until_empty(self, *, timeout: float = 60.0) -> None:
        """Start, run every due task and hook, then stop.

        Returns when nothing claimable is due now and nothing runs. For tests and one-off scripts.
        """
        runner = asyncio.create_task(self.run())
        deadline = time.monotonic() + timeout
        try:
            while not runner.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                # running is set before start-up opens the pool: ask the database only once it is open
                if (self._running and self._pool.is_open and not self._inflight.jobs
                        and not self._completions.held and await self._nothing_due()):
                    break
        finally:
            await self.stop()
            await runner

    # --- lifecycle -------------------------------------------------------------------

    async def _run(self) -> None:
        self._running = True
        self._stopped.clear()
        background: list[asyncio.Task[None]] = []
        services_stop = asyncio.Event()
        try:
            # every step may wait for the database: each gives way to a stop request at once
            if not (await wait_for_database(self._conninfo, self._stopping)
                    and await until_stopped(self._start(), self._stopping)):
                return
            background = [
                asyncio.create_task(self._liveness.run_listen(), name="anchor-listen"),
                asyncio.create_task(self._liveness.run_heartbeat(), name="anchor-heartbeat"),
                asyncio.create_task(self._completions.run(), name="anchor-flush"),
            ]
            background += await self._start_services(services_stop)
            log.info(
                "worker %s started: tasks %s, queues %s, concurrency %s",
                self.worker_id, ", ".join(self._task_names), ", ".join(self._served_queues), self.config.concurrency,
            )
            await self._claims.run()
        finally:
            services_stop.set()
            await self._shutdown(background)

    async def _start(self) -> None:
        await self._pool.open()
        await self._hooks.open()
        self._usercode.open()
        # the worker must be registered before its first claim, or rescue would take its tasks at once
        try:
            await retrying("heartbeat", self._liveness.heartbeat_once)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DatabaseSetupError(
                f"this role may not use the SQL core ({one_line(exc)}): grant it anchor_worker "
                "(`anchor install-sql --roles` creates the roles)"
            ) from None
        if self.config.register_tasks:
            await retrying("register tasks", self._register_tasks)

    async def _register_tasks(self) -> None:
        async with self._pool.connection() as conn:
            row = await fetch_one(conn, queries.REGISTER_TASKS, self.tasks.registration())
        log.info("task definitions (version %s): %s", self.tasks.version, row[0] if row else None)

    async def _start_services(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        if not self._service_factories:
            return []
        # their own connections: a long maintenance round must not hold up claims
        self._service_pool = AsyncConnectionPool(
            self._direct_conninfo, min_size=1, max_size=max(2, len(self._service_factories)),
            kwargs=autocommit_settings("anchor-worker"), open=False, timeout=10, name="anchor-services",
        )
        await self._service_pool.open()
        return [asyncio.create_task(_run_service(factory(self._service_pool), stop))
                for factory in self._service_factories]

    def _held_ids(self) -> list[int]:
        return [*self._inflight.jobs, *self._completions.held_ids()]

    def _on_signal(self, name: str) -> None:
        if self._stopping.is_set():
            self._force_stop(name)
        else:
            self._request_stop(name)

    def _force_stop(self, why: str) -> None:
        """A second signal: stop now. Running executions are interrupted and handed back if the database
        answers within a second; what is left, the rescuer recovers."""
        if self._forced:
            return
        self._forced = True
        log.warning("worker %s stopping now (%s again): not waiting for running tasks", self.worker_id, why)
        for job in self._inflight.jobs.values():
            if job.interruptible:
                self._usercode.interrupt(job, "shutdown")
            elif job.task is not None:
                job.task.cancel()  # reporting to the database: it can wait for rescue
        if self._shutdown_step is not None:
            self._shutdown_step.cancel()

    def _request_stop(self, why: str) -> None:
        if not self._stopping.is_set():
            log.info("worker %s stopping (%s)", self.worker_id, why)
        self._stopping.set()
        self._inflight.wake_event.set()

    def _on_fatal(self, error: AbandonedThreadsError) -> None:
        if self._fatal_error is None:
            self._fatal_error = error
            log.critical("%s", error)
            self._request_stop("too many abandoned threads")

    async def _nothing_due(self) -> bool:
        async with self._pool.connection() as conn:
            row = await fetch_one(conn, queries.DUE_COUNT, {"task_names": self._task_names})
        return row is not None and row[0] == 0

    async def _shutdown(self, background: list[asyncio.Task[None]]) -> None:
        jobs = self._inflight.jobs
        grace = self.config.shutdown_grace.total_seconds()
        try:
            running = [job.task for job in jobs.values() if job.task is not None]
            if running and not self._forced:
                log.info("waiting up to %gs for %s running tasks", grace, len(running))
                await asyncio.wait(running, timeout=grace)
            for job in list(jobs.values()):
                self._usercode.interrupt(job, "shutdown")
            remaining = [job.task for job in jobs.values() if job.task is not None and not job.task.done()]
            if remaining:
                await asyncio.wait(remaining, timeout=1 if self._forced else 5)
            # the database steps share one budget: against a database that is gone, stopping must not take long
            deadline = asyncio.get_running_loop().time() + _SHUTDOWN_DATABASE_BUDGET
            await self._bounded("flush completions", deadline, self._completions.flush)
            unfinished = [job for job in jobs.values() if job.hook_attempt is None]
            if unfinished:
                await self._bounded("hand back", deadline, self._executions.hand_back, unfinished)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for job in jobs.values():
                if job.task is not None:
                    job.task.cancel()  # still reporting to an unreachable database: rescue has them
            if self._liveness.registered:
                await self._bounded("deregister", deadline, self._pool.fetch_value, queries.DEREGISTER_WORKER,
                                    {"worker_id": self.worker_id})
                log.info("worker %s stopped", self.worker_id)
        finally:
            await self._hooks.close()
            if self._service_pool is not None:
                await self._service_pool.close()
                self._service_pool = None
            await self._pool.close()
            self._usercode.close()
            jobs.clear()
            self._running = False
            self._stopped.set()

    async def _bounded(self, what: str, deadline: float, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """A shutdown step: retried through a short outage until ``deadline`` (a second later once a second
        signal came), then given up: the rescuer recovers what is left."""
        loop = asyncio.get_running_loop()
        budget = min(deadline, loop.time() + 1) if self._forced else deadline
        step = self._shutdown_step = asyncio.ensure_future(retrying(what, call, *args))
        try:
            return await asyncio.wait_for(step, timeout=max(0.0, budget - loop.time()))
        except (TimeoutError, asyncio.CancelledError, psycopg.Error) as exc:
            current = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and current is not None and current.cancelling():
                raise  # the shutdown itself was cancelled, not just this step
            log.error("shutdown: could not %s (%s); rescue will recover what is left", what,
                      "stopped at once" if self._forced else one_line(exc))
            return None
        finally:
            self._shutdown_step = None


async def _run_service(service: Service, stop: asyncio.Event) -> None:
    try:
        await service.run(stop)
    except Exception:
        log.exception("maintenance service %s crashed", type(service).__name__)
