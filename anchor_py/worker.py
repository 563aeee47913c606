"""The worker: claims tasks, runs the user's executor, reports outcomes, runs onFailed hooks.

Connections, and why each is separate:
- a pool (autocommit) for claims, completions and failures: the hot path;
- one LISTEN connection (``anchor_tasks`` wakes the claim loop, ``anchor_cancel`` cancels a
  running execution); if it drops, polling every ``poll_interval`` still finds the work;
- one heartbeat connection, so a busy pool never makes the worker look dead;
- a pool of hook connections: each onFailed hook holds a transaction open while user code
  runs, and must never starve the claim path.

The state machine lives in the SQL core (``anchor.claim/complete/fail/finish_failure/
fail_hook/hand_back``); every call is fenced by (id, attempt, worker), so retrying a call
after a lost connection is always safe: a call that already took effect comes back 'stale'.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pydantic
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from anchor_py import queries
from anchor_py.hooktx import HookAsyncConnection, HookConnection
from anchor_py.pruner import pruner_factory
from anchor_py.rescuer import Rescuer, RescuerConfig
from anchor_py.services import Service, ServiceFactory
from anchor_py.taskcore import TaskContext, _bind_task, _current_task, is_fatal, is_retry_without_event
from anchor_py.taskspec import TaskSet, TaskSpec

if TYPE_CHECKING:  # prometheus-client is an optional extra: metrics are imported only by who passes them
    from anchor_py.metrics import WorkerMetrics

__all__ = ["AbandonedThreadsError", "Worker", "WorkerConfig", "default_services"]

log = logging.getLogger("anchor_py.worker")

# What user code (an executor or hook) may raise that fails its attempt. SystemExit too: a task calling
# sys.exit() must fail like any other error, not stop the worker and come back forever (in a thread it
# could not exit the process anyway). KeyboardInterrupt stays the operator's, to stop the worker.
_USER_CODE_ERRORS = (Exception, SystemExit)

# Database errors that mean "the server or the network went away": wait and try again.
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


class AbandonedThreadsError(RuntimeError):
    """Too many sync executions overran their timeout and still hold threads: restart the process."""


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs. Durations are in seconds.

    ``disable`` is the guide's switch: a disabled worker starts nothing. ``heartbeat_timeout``
    and ``rescue_interval`` decide how fast the tasks of a killed worker run again elsewhere
    (within about their sum). ``services`` replaces the default maintenance services
    (rescuer, and cron when installed); each entry builds one service on the worker's pool.
    """

    disable: bool = False
    concurrency: int = 10
    poll_interval: float = 1.0
    queues: Sequence[str] | None = None
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 20.0
    rescue_interval: float = 5.0
    deadline_grace: float = 30.0
    max_rescues: int = 5
    shutdown_grace: float = 10.0
    hook_attempts: int = 5
    hook_timeout: float = 60.0
    completion_batch_size: int = 200
    completion_flush_interval: float = 0.002
    max_abandoned_threads: int = 10
    worker_id: str | None = None
    register_tasks: bool = True
    services: Sequence[ServiceFactory] | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.hook_attempts < 1:
            raise ValueError(f"hook_attempts must be at least 1, got {self.hook_attempts}")
        for name in ("poll_interval", "heartbeat_interval", "heartbeat_timeout", "rescue_interval", "hook_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above zero, got {getattr(self, name)}")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval, or live workers look dead")
        if self.queues is not None:
            object.__setattr__(self, "queues", tuple(self.queues))


def default_services(config: WorkerConfig) -> list[ServiceFactory]:
    """The rescuer and the pruner (retention: 7 days succeeded, 30 days failed) always; the cron
    scheduler when ``anchor_py.cron`` is installed."""
    rescuer_config = RescuerConfig(
        interval=timedelta(seconds=config.rescue_interval),
        heartbeat_timeout=timedelta(seconds=config.heartbeat_timeout),
        deadline_grace=timedelta(seconds=config.deadline_grace),
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


@dataclass(frozen=True)
class _Handler:
    """How one task name runs on this worker's executor."""

    spec: TaskSpec
    execute: Callable[..., Any]
    execute_is_async: bool
    hook: Callable[..., Any] | None
    hook_is_async: bool


@dataclass(eq=False, slots=True)
class _Job:
    """One claimed piece of work in flight: an execution, or the hook of a final failure."""

    id: int
    handler: _Handler
    params: Any
    attempt: int
    max_attempts: int
    queue: str
    timeout: float
    deadline: datetime | None
    scheduled_at: datetime | None
    hook_attempt: int | None = None
    fence: int = 0
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    # set while user code runs: what may interrupt it and why it was interrupted
    interruptible: bool = False
    interrupt_reason: str | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.handler.spec.name

    def context(self) -> TaskContext:
        return TaskContext(
            task_id=self.id,
            task_name=self.name,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            queue=self.queue,
            deadline=self.deadline,
            scheduled_at=self.scheduled_at,
        )


@dataclass
class _SyncHookState:
    """Shared between a sync hook's thread and the loop, to decide commit vs abandon exactly once."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    backend_pid: int | None = None
    committing: bool = False
    abandoned: bool = False


class _Interrupted(Exception):
    """User code was interrupted (timeout, cancel request, shutdown); the reason is on the job."""


def _error_details(exc: BaseException) -> dict[str, Any]:
    kind = type(exc)
    module = kind.__module__
    return {
        "error_type": kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}",
        "error_message": str(exc) or repr(exc),
        "error_traceback": "".join(traceback.format_exception(kind, exc, exc.__traceback__)),
    }


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
        self.config = config or WorkerConfig()
        self.metrics = metrics
        if isinstance(dsn_or_pool, AsyncConnectionPool):
            self._user_pool: AsyncConnectionPool[Any] | None = dsn_or_pool
            conninfo = dsn_or_pool.conninfo
            if not isinstance(conninfo, str):
                raise TypeError("a pool given to Worker needs a conninfo string: the worker opens more connections")
            self._conninfo: str = conninfo
        elif isinstance(dsn_or_pool, str):
            self._user_pool = None
            self._conninfo = dsn_or_pool
        else:
            raise TypeError(f"expected a DSN string or an AsyncConnectionPool, got {type(dsn_or_pool).__name__}")
        self.tasks = tasks
        self.executor = executor
        self.worker_id = self.config.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._handlers = self._handlers_for(executor, tasks)
        self._task_names = sorted(self._handlers)
        self._served_queues = (
            set(self.config.queues)
            if self.config.queues is not None
            else {str(self._handlers[name].spec.definition.get("queue") or "default") for name in self._task_names}
        )
        if services is not None:
            self._service_factories: list[ServiceFactory] = list(services)
        elif self.config.services is not None:
            self._service_factories = list(self.config.services)
        else:
            self._service_factories = default_services(self.config)

        self._pool: AsyncConnectionPool[Any] | None = None
        self._hook_pool: AsyncConnectionPool[Any] | None = None
        self._service_pool: AsyncConnectionPool[Any] | None = None
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._jobs: dict[int, _Job] = {}
        # finished executions whose completion is not written yet: waiting, and sent (awaiting the reply)
        self._completions: list[tuple[int, int]] = []
        self._completing: list[list[tuple[int, int]]] = []
        self._completing_count = 0
        self._completions_ready = asyncio.Event()
        # with metrics on: name and execution seconds of each completion not written yet
        self._succeeded: dict[int, tuple[str, float]] = {}
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._backlog = False
        self._claiming = False
        self._next_wake: float | None = None
        self._abandoned_threads = 0
        self._fatal_error: BaseException | None = None
        self._running = False

    # --- public API ------------------------------------------------------------------

    @property
    def abandoned_threads(self) -> int:
        """Sync executions and hooks that overran their timeout and whose threads still run."""
        return self._abandoned_threads

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Run until stop() (or a signal, with install_signal_handlers), then shut down gracefully."""
        if self.config.disable:
            log.info("worker disabled (WorkerConfig.disable): not starting")
            return
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if install_signal_handlers else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._request_stop, sig.name)
        try:
            await self._run()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        if self._fatal_error is not None:
            raise self._fatal_error

    async def _run(self) -> None:
        await self._start()
        background: list[asyncio.Task[None]] = []
        services_stop = asyncio.Event()
        try:
            background = [
                asyncio.create_task(self._listen(), name="anchor-listen"),
                asyncio.create_task(self._heartbeat_loop(), name="anchor-heartbeat"),
                asyncio.create_task(self._flush_loop(), name="anchor-flush"),
            ]
            if self._service_factories:
                # their own connections: a long maintenance round must not hold up claims
                self._service_pool = AsyncConnectionPool(
                    self._conninfo, min_size=1, max_size=max(2, len(self._service_factories)), kwargs=kwargs_common(),
                    open=False, timeout=10, name="anchor-services",
                )
                await self._service_pool.open()
            for factory in self._service_factories:
                assert self._service_pool is not None
                service: Service = factory(self._service_pool)
                background.append(asyncio.create_task(self._run_service(service, services_stop)))
            log.info(
                "worker %s started: tasks %s, queues %s, concurrency %s",
                self.worker_id,
                ", ".join(self._task_names),
                ", ".join(sorted(self._served_queues)),
                self.config.concurrency,
            )
            await self._claim_loop()
        finally:
            services_stop.set()
            await self._shutdown(background)

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
                if (self._running and not self._jobs and not self._completions and not self._completing_count
                        and await self._nothing_due()):
                    break
        finally:
            await self.stop()
            await runner

    # --- set-up ----------------------------------------------------------------------

    @staticmethod
    def _handlers_for(executor: object, tasks: TaskSet) -> dict[str, _Handler]:
        handlers: dict[str, _Handler] = {}
        for spec in tasks:
            execute = getattr(executor, spec.execute_method, None)
            if execute is None:
                continue  # not this worker's task: it never claims it
            hook = None
            if spec.hook_method is not None:
                hook = getattr(executor, spec.hook_method, None)
                if hook is None:
                    raise TypeError(
                        f"{type(executor).__name__} implements {spec.execute_method} but not "
                        f"{spec.hook_method}: task {spec.name} declares events: [onFailed]"
                    )
            handlers[spec.name] = _Handler(
                spec=spec,
                execute=execute,
                execute_is_async=inspect.iscoroutinefunction(execute),
                hook=hook,
                hook_is_async=hook is not None and inspect.iscoroutinefunction(hook),
            )
        if not handlers:
            raise ValueError(
                f"{type(executor).__name__} implements none of the tasks "
                f"({', '.join(spec.execute_method for spec in tasks)})"
            )
        return handlers

    async def _start(self) -> None:
        self._running = True
        self._stopped.clear()
        config = self.config
        kwargs = kwargs_common()
        if self._user_pool is None:
            # claims and completions are batched, so a few connections serve any concurrency; failures
            # are one round trip each and get some headroom
            self._pool = AsyncConnectionPool(
                self._conninfo, min_size=2, max_size=max(4, min(2 + config.concurrency // 4, 10)), kwargs=kwargs,
                open=False, timeout=10, name="anchor-worker", configure=_configure_hot_path,
            )
            await self._pool.open()
        else:
            self._pool = self._user_pool
        self._hook_pool = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=max(2, min(config.concurrency, 10)),
            connection_class=HookAsyncConnection,
            kwargs={"autocommit": False, "application_name": "anchor-hook"},
            open=False,
            timeout=10,
            name="anchor-hooks",
        )
        await self._hook_pool.open()
        # abandoned threads keep their slot, so they must not shrink the pool below concurrency
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.concurrency + config.max_abandoned_threads, thread_name_prefix="anchor-task"
        )
        # the worker must be registered before its first claim, or rescue would take its tasks at once
        await self._retrying("heartbeat", self._heartbeat_once)
        if config.register_tasks:
            await self._retrying("register tasks", self._register_tasks)

    async def _register_tasks(self) -> None:
        assert self._pool is not None
        async with self._connection() as conn:
            row = await _fetch_one(
                conn, queries.REGISTER_TASKS,
                {"definitions": self.tasks.definitions_json(), "version": self.tasks.version},
            )
        log.info("task definitions (version %s): %s", self.tasks.version, row[0] if row else None)

    async def _run_service(self, service: Service, stop: asyncio.Event) -> None:
        try:
            await service.run(stop)
        except Exception:
            log.exception("maintenance service %s crashed", type(service).__name__)

    # --- claiming --------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        loop = asyncio.get_running_loop()
        concurrency = self.config.concurrency
        # with a backlog, claim half the slots at a time, as soon as half are free: the next claim then
        # runs in the database while the worker runs the previous half, and claims stay large
        backlog_batch = max(1, concurrency // 2)
        with_completions = True
        while not self._stopping.is_set():
            # a finished task holds its slot until its completion is written: otherwise a slow complete
            # lets the worker claim without bound, and a crash would leave all of it to rescue. Waiting
            # completions are sent with the claim, ahead of it in one transaction, so they count as free.
            waiting = min(len(self._completions), self.config.completion_batch_size) if with_completions else 0
            capacity = concurrency - len(self._jobs) - len(self._completions) - self._completing_count + waiting
            if capacity < (backlog_batch if self._backlog else 1):
                if capacity <= 0:
                    # whatever woke us (a notification, a timer) found no free slot: claim when one frees up
                    self._backlog = True
            else:
                if self._backlog:
                    # half a batch at a time: while this claim runs in the database, Python runs the
                    # previous half (measured on a quiet machine: +10-20% over full serial batches)
                    capacity = min(capacity, backlog_batch)
                try:
                    claimed = await self._claim(capacity, with_completions=waiting > 0)
                except _CONNECTION_ERRORS as exc:
                    log.warning("lost the database while claiming (%s); reconnecting", exc)
                    await self._recover()
                    continue
                except psycopg.Error as exc:
                    if not waiting:
                        raise
                    # the completions sent along failed (or made the claim fail): claim alone, and let
                    # the flush loop retry them on its own
                    log.warning("could not complete %s tasks with the claim (%s); retrying apart", waiting, exc)
                    with_completions = False
                    continue
                with_completions = True
                self._backlog = claimed == capacity
                if self._backlog:
                    continue
            wait = self.config.poll_interval
            if self._next_wake is not None:
                wait = max(0.0, min(wait, self._next_wake - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def _claim(self, capacity: int, *, with_completions: bool = True) -> int:
        """Claim up to ``capacity`` tasks and start them; waiting completions are written first, in the
        same round trip and transaction (pipeline mode), so their slots are free for this claim."""
        assert self._pool is not None
        arguments = {
            "worker_id": self.worker_id,
            "max_tasks": capacity,
            "task_names": self._task_names,
            "queues": list(self.config.queues) if self.config.queues is not None else None,
            "hook_timeout": timedelta(seconds=self.config.hook_timeout),
            "max_hook_attempts": self.config.hook_attempts,
        }
        batch = self._take_completions() if with_completions else []
        outcomes: list[tuple[int, str]] = []
        self._claiming = True
        try:
            async with self._connection() as conn:
                if batch:
                    async with conn.pipeline():
                        done = conn.cursor(row_factory=tuple_row)
                        await done.execute(queries.COMPLETE, self._complete_arguments(batch), prepare=True)
                        cursor = conn.cursor(row_factory=tuple_row)
                        await cursor.execute(queries.CLAIM, arguments, prepare=True)
                    outcomes = await done.fetchall()
                else:
                    cursor = conn.cursor(row_factory=tuple_row)
                    await cursor.execute(queries.CLAIM, arguments, prepare=True)
                rows = await cursor.fetchall()
        except BaseException:
            self._completions_failed(batch)
            raise
        finally:
            self._claiming = False
        if batch:
            self._completions_done(batch, outcomes)
        if self.metrics is not None:
            self.metrics.record_claim(sum(1 for row in rows if row[0] != "wake"))
        claimed = 0
        self._next_wake = None
        loop = asyncio.get_running_loop()
        jobs = self._jobs
        handlers = self._handlers
        for kind, task_id, name, params, attempt, hook_attempt, max_attempts, queue, timeout, deadline, \
                scheduled_at, run_at, fence, db_now in rows:
            if kind == "wake":
                if run_at is not None:
                    # the database clock decides when work is due: wait for its distance, not our clock
                    self._next_wake = loop.time() + max(0.0, (run_at - db_now).total_seconds()) + 0.001
                continue
            claimed += 1
            job = _Job(
                id=task_id,
                handler=handlers[name],
                params=params,
                attempt=attempt,
                max_attempts=max_attempts,
                queue=queue,
                timeout=timeout.total_seconds(),
                deadline=deadline,
                scheduled_at=scheduled_at,
                hook_attempt=hook_attempt,
                fence=fence,
            )
            jobs[task_id] = job
            runner = self._execute(job) if kind == "execute" else self._run_hook(job)
            job.task = loop.create_task(runner, name=f"anchor-task-{task_id}")
        return claimed

    async def _recover(self) -> None:
        """After the database came back: heartbeat and flush completions before claiming again."""
        await self._retrying("reconnect (heartbeat)", self._heartbeat_once)
        await self._retrying("flush completions", self._flush_completions)

    def _release(self, job: _Job) -> None:
        self._jobs.pop(job.id, None)
        if self._backlog:
            self._wake.set()

    def _request_stop(self, why: str) -> None:
        if not self._stopping.is_set():
            log.info("worker %s stopping (%s)", self.worker_id, why)
        self._stopping.set()
        self._wake.set()

    async def _nothing_due(self) -> bool:
        assert self._pool is not None
        async with self._connection() as conn:
            row = await _fetch_one(conn, queries.TESTING_DUE_COUNT, {"task_names": self._task_names})
        return row is not None and row[0] == 0

    # --- running user code -----------------------------------------------------------

    async def _call_user_code(
        self, job: _Job, timeout: float, function: Callable[..., Any], is_async: bool, ctx: TaskContext, *args: Any
    ) -> None:
        """Run ``function(ctx, *args)`` (an executor or hook method) with ``current_task()`` bound to
        ``ctx``; raise _Interrupted when a timeout, cancel request or shutdown stops it (a sync call's
        thread is abandoned).

        An async function is awaited inside the job's own asyncio Task (which already runs in its own
        copy of the context), so interrupting it is ``job.task.cancel()`` and no second Task is needed.
        """
        loop = asyncio.get_running_loop()
        if is_async:
            # the job's task has a context of its own (create_task copied it): bind there, reset after
            token = _current_task.set(ctx)
            job.interrupt_reason = None
            job.interruptible = True
            job.timer = loop.call_later(timeout, self._interrupt, job, "timeout")
            try:
                await function(ctx, *args)
            except asyncio.CancelledError:
                if job.interrupt_reason is None:
                    raise
                _uncancel()
                raise _Interrupted() from None
            finally:
                job.interruptible = False
                job.timer.cancel()
                _current_task.reset(token)
            if job.interrupt_reason is not None:
                # the code swallowed its cancellation and returned: it was still interrupted
                _uncancel()
                raise _Interrupted()
            return
        assert self._threads is not None
        thread_call = loop.run_in_executor(
            self._threads, contextvars.copy_context().run, _call_bound, ctx, function, (ctx, *args)
        )
        job.interrupt_reason = None
        job.interruptible = True
        job.timer = loop.call_later(timeout, self._interrupt, job, "timeout")
        try:
            # shielded: interrupting the job must not try to cancel the thread's future, which we track
            await asyncio.shield(thread_call)
        except asyncio.CancelledError:
            if job.interrupt_reason is None:
                raise
            _uncancel()
            self._abandon_thread(thread_call)
            raise _Interrupted() from None
        finally:
            job.interruptible = False
            job.timer.cancel()
        if job.interrupt_reason is not None:
            raise _Interrupted()

    def _interrupt(self, job: _Job, reason: str) -> None:
        if not job.interruptible or job.interrupt_reason is not None or job.task is None:
            return
        job.interrupt_reason = reason
        job.task.cancel()

    def _abandon_thread(self, future: asyncio.Future[Any]) -> None:
        if future.done():
            return
        self._abandoned_threads += 1

        def finished(_: Any) -> None:
            self._abandoned_threads -= 1

        future.add_done_callback(finished)
        if self._abandoned_threads > self.config.max_abandoned_threads and self._fatal_error is None:
            self._fatal_error = AbandonedThreadsError(
                f"{self._abandoned_threads} sync executions overran their timeout and still hold threads "
                f"(max_abandoned_threads={self.config.max_abandoned_threads}); restart the worker process"
            )
            log.critical("%s", self._fatal_error)
            self._request_stop("too many abandoned threads")

    # --- executions ------------------------------------------------------------------

    async def _execute(self, job: _Job) -> None:
        handler = job.handler
        try:
            params = handler.spec.params_model.model_validate(job.params)
        except pydantic.ValidationError as exc:
            await self._report_failure(job, {
                "error_type": "anchor.InvalidParams",
                "error_message": f"stored params no longer fit {handler.spec.params_model.__name__}: {exc}",
                "error_traceback": None,
            }, fatal=True)
            return
        try:
            await self._call_user_code(job, job.timeout, handler.execute, handler.execute_is_async, job.context(),
                                       params)
        except _Interrupted:
            reason = job.interrupt_reason
            if reason == "shutdown":
                return  # stays in _jobs: the shutdown hands it back
            if reason == "timeout":
                details = {
                    "error_type": "anchor.TaskTimeout",
                    "error_message": f"timed out after {job.timeout:g}s (the task's timeout)",
                    "error_traceback": None,
                }
            else:
                details = {"error_type": "anchor.TaskCancelled", "error_message": "cancelled on request",
                           "error_traceback": None}
            await self._report_failure(job, details, params=params)
            return
        except _USER_CODE_ERRORS as exc:
            await self._report_failure(
                job, _error_details(exc), fatal=is_fatal(exc), record_event=not is_retry_without_event(exc),
                params=params,
            )
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "task %s %s attempt %s succeeded in %.3fs", job.id, job.name, job.attempt,
                time.monotonic() - job.started, extra=self._log_fields(job, "succeeded"),
            )
        self._completions.append((job.id, job.fence))
        if self.metrics is not None:
            self._succeeded[job.id] = (job.handler.spec.name, time.monotonic() - job.started)
        self._completions_ready.set()
        self._release(job)

    async def _report_failure(
        self,
        job: _Job,
        details: dict[str, Any],
        *,
        fatal: bool = False,
        record_event: bool = True,
        params: Any = None,
    ) -> None:
        arguments = {
            "id": job.id,
            "fence": job.fence,
            "worker_id": self.worker_id,
            "fatal": fatal,
            "record_event": record_event,
            "hook_timeout": timedelta(seconds=self.config.hook_timeout),
            **details,
        }
        try:
            outcome = await self._retrying("report a failure", self._fetch_value, queries.FAIL, arguments)
        except asyncio.CancelledError:
            self._release(job)
            raise
        if self.metrics is not None:
            self.metrics.record_execution(job.name, str(outcome), time.monotonic() - job.started)
        level = logging.INFO if outcome == "retry" else logging.WARNING
        log.log(
            level, "task %s %s attempt %s failed in %.3fs -> %s: %s%s",
            job.id, job.name, job.attempt, time.monotonic() - job.started, outcome,
            details["error_type"], "" if record_event else " (no error event)",
            extra=self._log_fields(job, outcome, error=details["error_message"]),
        )
        if outcome == "failing" and params is not None:
            job.hook_attempt = 1
            await self._run_hook(job, params)
            return
        if outcome == "failing":
            # the params could not be parsed: the hook can never run with them
            job.hook_attempt = 1
            await self._hook_cannot_run(job, details["error_message"])
            return
        self._release(job)
        if outcome == "retry":
            self._backlog = True  # claim again soon: its wake row sets the timer for this retry
            self._wake.set()

    # --- onFailed hooks ----------------------------------------------------------------

    async def _run_hook(self, job: _Job, params: Any = None) -> None:
        """Make the failure final and run the hook in one transaction; retried by the core if it fails."""
        try:
            if params is None:
                try:
                    params = job.handler.spec.params_model.model_validate(job.params)
                except pydantic.ValidationError as exc:
                    await self._hook_cannot_run(job, f"stored params no longer fit the model: {exc}")
                    return
            job.started = time.monotonic()
            if job.handler.hook_is_async or job.handler.hook is None:
                outcome = await self._run_async_hook(job, params)
            else:
                outcome = await self._run_sync_hook(job, params)
            if outcome is not None:
                self._log_hook(job, outcome)
        finally:
            self._release(job)

    async def _run_async_hook(self, job: _Job, params: Any) -> str | None:
        assert self._hook_pool is not None
        hook = job.handler.hook
        try:
            async with self._hook_pool.connection() as conn:
                assert isinstance(conn, HookAsyncConnection)
                try:
                    outcome = await self._finish_failure(conn, job)
                    if outcome != "failed":
                        await conn.rollback()
                        return outcome
                    if hook is not None:
                        conn.hook_running = True
                        try:
                            await self._call_user_code(
                                job, self.config.hook_timeout, hook, True, job.context(), job.id, params, conn
                            )
                        finally:
                            conn.hook_running = False
                    await conn.commit()
                    return "failed"
                except BaseException:
                    await _quietly_rollback(conn)
                    raise
        except _Interrupted:
            if job.interrupt_reason == "shutdown":
                return None  # rolled back; deregistering gives the hook attempt back
            return await self._fail_hook(job, {
                "error_type": "anchor.HookTimeout",
                "error_message": f"onFailed hook timed out after {self.config.hook_timeout:g}s",
                "error_traceback": None,
            })
        except _CONNECTION_ERRORS as exc:
            # the commit may or may not have happened: fail_hook is fenced, so it is 'stale' if it did
            return await self._fail_hook(job, _error_details(exc))
        except _USER_CODE_ERRORS as exc:
            return await self._fail_hook(job, _error_details(exc))

    async def _run_sync_hook(self, job: _Job, params: Any) -> str | None:
        assert self._threads is not None and job.handler.hook is not None
        loop = asyncio.get_running_loop()
        state = _SyncHookState()
        ctx = job.context()
        thread_call = loop.run_in_executor(
            self._threads, contextvars.copy_context().run, _sync_hook_transaction,
            self._conninfo, self.worker_id, job, ctx, params, state,
        )
        future = asyncio.shield(thread_call)
        job.interrupt_reason = None
        job.interruptible = True
        job.timer = loop.call_later(self.config.hook_timeout, self._interrupt, job, "timeout")
        try:
            try:
                return str(await future)
            except asyncio.CancelledError:
                if job.interrupt_reason is None:
                    raise
                _uncancel()
            finally:
                job.interruptible = False
                job.timer.cancel()
            with state.lock:
                state.abandoned = not state.committing
            if not state.abandoned:
                return str(await future)  # it was committing: that takes a moment, not a timeout
            self._abandon_thread(thread_call)
            if state.backend_pid is not None:
                # its transaction holds the task's row: end it on the server, since the thread cannot be
                await self._retrying("end the hook's transaction", self._fetch_value, queries.TERMINATE_BACKEND,
                                     {"pid": state.backend_pid})
            if job.interrupt_reason == "shutdown":
                return None
            return await self._fail_hook(job, {
                "error_type": "anchor.HookTimeout",
                "error_message": f"onFailed hook timed out after {self.config.hook_timeout:g}s",
                "error_traceback": None,
            })
        except _USER_CODE_ERRORS as exc:
            return await self._fail_hook(job, _error_details(exc))

    async def _finish_failure(self, conn: psycopg.AsyncConnection[Any], job: _Job) -> str:
        row = await _fetch_one(
            conn, queries.FINISH_FAILURE, {"id": job.id, "fence": job.fence, "worker_id": self.worker_id}
        )
        return str(row[0]) if row else "stale"

    async def _fail_hook(self, job: _Job, details: dict[str, Any], max_hook_attempts: int | None = None) -> str:
        arguments = {
            "id": job.id,
            "fence": job.fence,
            "worker_id": self.worker_id,
            "max_hook_attempts": max_hook_attempts or self.config.hook_attempts,
            **details,
        }
        outcome = str(await self._retrying("record a hook failure", self._fetch_value, queries.FAIL_HOOK, arguments))
        if self.metrics is not None:
            self.metrics.record_hook(job.name, outcome)
        log.log(
            logging.ERROR if outcome == "hook_failed" else logging.WARNING,
            "task %s %s onFailed hook attempt %s raised %s: %s -> %s",
            job.id, job.name, job.hook_attempt, details["error_type"], details["error_message"], outcome,
            extra=self._log_fields(job, f"hook_{outcome}", error=details["error_message"]),
        )
        if outcome == "retry":
            self._backlog = True
            self._wake.set()
        return f"hook_{outcome}"

    async def _hook_cannot_run(self, job: _Job, reason: str) -> None:
        """The params cannot be parsed, so no attempt of the hook can succeed: hook_failed now."""
        try:
            await self._fail_hook(
                job, {"error_type": "anchor.InvalidParams", "error_message": reason, "error_traceback": None},
                max_hook_attempts=job.hook_attempt,
            )
        finally:
            self._release(job)

    def _log_hook(self, job: _Job, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.record_hook(job.name, outcome)
        if outcome == "failed":
            log.warning(
                "task %s %s failed; onFailed hook attempt %s committed with it in %.3fs",
                job.id, job.name, job.hook_attempt, time.monotonic() - job.started,
                extra=self._log_fields(job, "failed"),
            )
        elif outcome == "stale":
            log.warning("task %s %s: hook lease moved on before the hook ran (stale)", job.id, job.name,
                        extra=self._log_fields(job, "stale"))

    def _log_fields(self, job: _Job, outcome: str, error: str | None = None) -> dict[str, Any]:
        fields = {
            "task_id": job.id,
            "task_name": job.name,
            "attempt": job.attempt,
            "outcome": outcome,
            "duration_ms": round((time.monotonic() - job.started) * 1000, 3),
            "worker_id": self.worker_id,
        }
        if job.hook_attempt is not None:
            fields["hook_attempt"] = job.hook_attempt
        if error is not None:
            fields["error"] = error
        return fields

    # --- completions -------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._completions_ready.wait()
            if len(self._completions) < self.config.completion_batch_size:
                # let a few more finish, so one round trip (and one commit) completes many; meanwhile a
                # claim loop with a backlog, or woken by a new task, takes them along with its claim
                await asyncio.sleep(self.config.completion_flush_interval)
            while self._claiming and self._backlog:
                # a claim is in flight and another follows at once: it carries these completions in its
                # transaction, so a flush of our own would only add a commit
                await asyncio.sleep(self.config.completion_flush_interval)
            try:
                await self._flush_completions()
            except psycopg.Error as exc:
                log.warning("could not flush %s completions (%s); retrying", len(self._completions), exc)
                await asyncio.sleep(0.5)

    def _take_completions(self) -> list[tuple[int, int]]:
        """The next batch of waiting completions, moved to 'sent' (still held until written)."""
        size = self.config.completion_batch_size
        batch = self._completions[:size]
        if batch:
            del self._completions[:size]
            self._completing.append(batch)
            self._completing_count += len(batch)
        return batch

    def _completions_failed(self, batch: list[tuple[int, int]]) -> None:
        """A batch was not written (or we cannot know): put it back in front; complete is fenced."""
        if batch:
            self._completing.remove(batch)
            self._completing_count -= len(batch)
            self._completions[:0] = batch
            self._completions_ready.set()

    def _completions_done(self, batch: list[tuple[int, int]], outcomes: list[tuple[int, str]]) -> None:
        self._completing.remove(batch)
        self._completing_count -= len(batch)
        if self.metrics is not None:
            self._record_completions(outcomes)
        if self._backlog:
            self._wake.set()  # the flushed tasks' slots are free now
        for task_id, outcome in outcomes:
            if outcome == "stale":
                log.warning("task %s finished, but it had moved on (rescued or cancelled): stale", task_id,
                            extra={"task_id": task_id, "outcome": "stale", "worker_id": self.worker_id})

    def _record_completions(self, outcomes: list[tuple[int, str]]) -> None:
        """Once per completion batch: counters by (name, outcome) in one step each, then the durations."""
        assert self.metrics is not None
        by_label: dict[tuple[str, str], list[float]] = {}
        for task_id, outcome in outcomes:
            entry = self._succeeded.pop(task_id, None)
            if entry is not None:
                by_label.setdefault((entry[0], outcome), []).append(entry[1])
        for (name, outcome), seconds in by_label.items():
            self.metrics.executions.labels(name, outcome).inc(len(seconds))
            histogram = self.metrics.duration.labels(name, outcome)
            for value in seconds:
                histogram.observe(value)

    def _complete_arguments(self, batch: list[tuple[int, int]]) -> dict[str, Any]:
        return {
            "ids": [task_id for task_id, _ in batch],
            "fences": [fence for _, fence in batch],
            "worker_id": self.worker_id,
        }

    async def _flush_completions(self) -> None:
        async with self._flush_lock:
            while self._completions:
                batch = self._take_completions()
                try:
                    async with self._connection() as conn, conn.cursor(row_factory=tuple_row) as cursor:
                        await cursor.execute(queries.COMPLETE, self._complete_arguments(batch), prepare=True)
                        outcomes = await cursor.fetchall()
                except BaseException:
                    self._completions_failed(batch)
                    raise
                self._completions_done(batch, outcomes)
            self._completions_ready.clear()

    # --- heartbeat, notifications ------------------------------------------------------

    async def _heartbeat_once(self) -> list[int]:
        info = Jsonb({
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "concurrency": self.config.concurrency,
            "tasks": self._task_names,
            "queues": sorted(self._served_queues),
        })
        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            row = await _fetch_one(
                conn, queries.HEARTBEAT, self._heartbeat_arguments(info)
            )
        return list(row[0]) if row and row[0] else []

    def _heartbeat_arguments(self, info: Jsonb | None) -> dict[str, Any]:
        # held: executions and hooks in flight, and completions not yet flushed; anything else the
        # database has locked by this worker is a claim whose reply was lost
        return {
            "worker_id": self.worker_id,
            "held_ids": [
                *self._jobs,
                *(task_id for task_id, _ in self._completions),
                *(task_id for batch in self._completing for task_id, _ in batch),
            ],
            "info": info,
            # a task claimed longer ago than a worker may stall unnoticed, that the worker does not hold,
            # was a claim whose reply was lost (a longer stall would have had the worker rescued anyway)
            "release_after": timedelta(seconds=self.config.heartbeat_timeout),
        }

    async def _heartbeat_loop(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                await asyncio.sleep(self.config.heartbeat_interval)
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True, application_name="anchor-heartbeat"
                        )
                    row = await _fetch_one(conn, queries.HEARTBEAT, self._heartbeat_arguments(None))
                except _CONNECTION_ERRORS as exc:
                    log.warning("heartbeat failed (%s); retrying", exc)
                    if conn is not None:
                        await conn.close()
                    conn = None
                    continue
                for task_id in (row[0] if row and row[0] else []):
                    self._cancel_requested(int(task_id))
        finally:
            if conn is not None:
                await conn.close()

    def _cancel_requested(self, task_id: int) -> None:
        job = self._jobs.get(task_id)
        if job is not None and job.hook_attempt is None:
            log.info("task %s %s: cancel requested, cancelling the execution", task_id, job.name,
                     extra=self._log_fields(job, "cancel_requested"))
            self._interrupt(job, "cancel")

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name="anchor-listen"
                ) as conn:
                    await conn.execute(queries.LISTEN_TASKS)
                    await conn.execute(queries.LISTEN_CANCEL)
                    backoff = 0.1
                    self._wake.set()  # notifications sent while we were not listening are lost
                    async for notification in conn.notifies():
                        if notification.channel == "anchor_cancel":
                            self._cancel_requested(int(notification.payload))
                        elif notification.payload in self._served_queues:
                            self._wake.set()
            except _CONNECTION_ERRORS as exc:
                log.warning("LISTEN connection lost (%s); polling until it is back", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    # --- shutdown ----------------------------------------------------------------------

    async def _shutdown(self, background: list[asyncio.Task[None]]) -> None:
        try:
            jobs = [job.task for job in self._jobs.values() if job.task is not None]
            if jobs:
                log.info("waiting up to %gs for %s running tasks", self.config.shutdown_grace, len(jobs))
                await asyncio.wait(jobs, timeout=self.config.shutdown_grace)
            for job in list(self._jobs.values()):
                self._interrupt(job, "shutdown")
            remaining = [job.task for job in self._jobs.values() if job.task is not None and not job.task.done()]
            if remaining:
                await asyncio.wait(remaining, timeout=5)
            await self._bounded("flush completions", self._flush_completions)
            unfinished = [job for job in self._jobs.values() if job.hook_attempt is None]
            if unfinished:
                await self._bounded("hand back", self._hand_back, unfinished)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for job in self._jobs.values():
                if job.task is not None:
                    job.task.cancel()  # still reporting to an unreachable database: rescue has them
            await self._bounded("deregister", self._fetch_value, queries.DEREGISTER_WORKER,
                                {"worker_id": self.worker_id})
            log.info("worker %s stopped", self.worker_id)
        finally:
            if self._hook_pool is not None:
                await self._hook_pool.close()
            if self._service_pool is not None:
                await self._service_pool.close()
            if self._pool is not None and self._user_pool is None:
                await self._pool.close()
            if self._threads is not None:
                self._threads.shutdown(wait=False, cancel_futures=True)
            self._jobs.clear()
            self._running = False
            self._stopped.set()

    async def _hand_back(self, jobs: list[_Job]) -> None:
        assert self._pool is not None
        arguments = {"ids": [job.id for job in jobs], "fences": [job.fence for job in jobs],
                     "worker_id": self.worker_id}
        async with self._connection() as conn, conn.cursor(row_factory=tuple_row) as cursor:
            await cursor.execute(queries.HAND_BACK, arguments)
            outcomes: dict[int, str] = dict(await cursor.fetchall())
        if self.metrics is not None:
            for job in jobs:
                self.metrics.record_execution(job.name, "handed_back", time.monotonic() - job.started)
        for job in jobs:
            log.info("task %s %s attempt %s handed back at shutdown -> %s", job.id, job.name, job.attempt,
                     outcomes.get(job.id), extra=self._log_fields(job, f"handed_back_{outcomes.get(job.id)}"))

    # --- database helpers ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pool connection; on a user's non-autocommit pool each use is its own transaction."""
        assert self._pool is not None
        async with self._pool.connection() as conn:
            if conn.autocommit:
                yield conn
            else:
                async with conn.transaction():
                    yield conn

    async def _fetch_value(self, query: str, arguments: dict[str, Any]) -> Any:
        assert self._pool is not None
        async with self._connection() as conn:
            row = await _fetch_one(conn, query, arguments)
        return row[0] if row else None

    async def _retrying(self, what: str, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Retry ``call`` through connection errors with backoff; every call we retry is fenced."""
        backoff = 0.1
        while True:
            try:
                return await call(*args)
            except _CONNECTION_ERRORS as exc:
                log.warning("%s: database unavailable (%s); retrying in %.1fs", what, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _bounded(self, what: str, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """A shutdown step: retried through a short outage, then given up (rescue recovers the rest)."""
        try:
            return await asyncio.wait_for(self._retrying(what, call, *args), timeout=10)
        except (TimeoutError, psycopg.Error) as exc:
            log.error("shutdown: could not %s (%s); rescue will recover what is left", what, exc)
            return None


def kwargs_common() -> dict[str, Any]:
    """Connection settings of the worker's autocommit pools: one statement, one transaction."""
    return {"autocommit": True, "application_name": "anchor-worker"}


async def _configure_hot_path(conn: psycopg.AsyncConnection[Any]) -> None:
    """Session settings of the worker's own claim/complete connections.

    No JIT: with a large table the generic plan of the claim's pick is estimated above jit_above_cost,
    so every claim paid ~6 ms of LLVM compilation for a statement that runs in 0.3 ms (1M pending rows:
    claim p50 7.8 ms with JIT, 1.3 ms without).
    """
    await conn.execute("set jit = off")
    if not conn.autocommit:
        await conn.commit()


def _call_bound(ctx: TaskContext, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    with _bind_task(ctx):
        return function(*args)


def _sync_hook_transaction(
    conninfo: str, worker_id: str, job: _Job, ctx: TaskContext, params: Any, state: _SyncHookState
) -> str:
    """A sync executor's hook, in a worker thread: finish_failure, the hook and the commit together."""
    hook = job.handler.hook
    assert hook is not None
    conn = HookConnection.connect(conninfo, autocommit=False, application_name="anchor-hook")
    try:
        state.backend_pid = conn.info.backend_pid
        with conn.cursor(row_factory=tuple_row) as cursor:
            row = cursor.execute(
                queries.FINISH_FAILURE, {"id": job.id, "fence": job.fence, "worker_id": worker_id}
            ).fetchone()
        if not row or row[0] != "failed":
            conn.rollback()
            return "stale"
        conn.hook_running = True
        try:
            with _bind_task(ctx):
                hook(ctx, job.id, params, conn)
        finally:
            conn.hook_running = False
        with state.lock:
            if state.abandoned:
                conn.rollback()
                return "abandoned"
            state.committing = True
        conn.commit()
        return "failed"
    finally:
        conn.close()


def _uncancel() -> None:
    """We handled a cancellation we caused ourselves; later awaits in this task must not see it."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


async def _fetch_one(conn: psycopg.AsyncConnection[Any], query: str, arguments: dict[str, Any]) -> Any:
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, arguments)
        return await cursor.fetchone()


async def _quietly_rollback(conn: HookAsyncConnection) -> None:
    conn.hook_running = False
    # a broken connection fails here: the pool discards it, and the server already rolled it back
    with contextlib.suppress(psycopg.Error):
        await conn.rollback()
