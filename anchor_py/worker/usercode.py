"""Running the user's code (executor and hook methods): timeouts, interruption, threads.

An async method is awaited inside the job's own asyncio Task, so interrupting it is ``job.task.cancel()``.
A sync method runs in a thread of our pool; a thread cannot be stopped, so an interrupted one is
abandoned (it keeps its pool slot until it returns) and too many abandoned threads stop the worker:
only a process restart gets them back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
from collections.abc import Callable
from typing import Any

from anchor_py.taskcore import TaskContext, reset_current_task, set_current_task
from anchor_py.worker.job import Job

__all__ = ["USER_CODE_ERRORS", "AbandonedThreadsError", "Interrupted", "UserCodeRunner", "uncancel"]

log = logging.getLogger("anchor_py.worker")

# What user code (an executor or hook) may raise that fails its attempt. SystemExit too: a task calling
# sys.exit() must fail like any other error, not stop the worker and come back forever (in a thread it
# could not exit the process anyway). KeyboardInterrupt stays the operator's, to stop the worker.
USER_CODE_ERRORS = (Exception, SystemExit)


class AbandonedThreadsError(RuntimeError):
    """Too many sync executions overran their timeout and still hold threads: restart the process."""


class Interrupted(Exception):
    """User code was interrupted (timeout, cancel request, shutdown); the reason is on the job."""


class UserCodeRunner:
    """Calls executor and hook methods with ``current_task()`` bound, under a timeout, interruptibly.

    ``on_fatal`` is called once when too many threads are abandoned: the worker must stop.
    """

    def __init__(self, concurrency: int, max_abandoned_threads: int,
                 on_fatal: Callable[[AbandonedThreadsError], None]) -> None:
        self._max_threads = concurrency + max_abandoned_threads
        self._max_abandoned = max_abandoned_threads
        self._on_fatal = on_fatal
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self.abandoned_threads = 0

    def open(self) -> None:
        # abandoned threads keep their slot, so they must not shrink the pool below concurrency
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._max_threads, thread_name_prefix="anchor-task"
        )

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    async def call(
        self, job: Job, timeout: float, function: Callable[..., Any], is_async: bool, ctx: TaskContext, *args: Any
    ) -> Any:
        """Run ``function(ctx, *args)`` and return what it returns; raise Interrupted when a timeout, cancel
        request or shutdown stops it (a sync call's thread is abandoned)."""
        if is_async:
            # the job's task has a context of its own (create_task copied it): bind there, reset after.
            # arm() and disarm() written out: this is every async execution's path. The timer stays off the
            # job: its handle keeps a copy of this context (holding ctx, whose progress sink holds the job),
            # so job -> timer would make every execution a reference cycle left to the garbage collector
            token = set_current_task(ctx)
            job.interrupt_reason = None
            job.interruptible = True
            timer = asyncio.get_running_loop().call_later(timeout, self.interrupt, job, "timeout")
            try:
                returned = await function(ctx, *args)
            except asyncio.CancelledError:
                if job.interrupt_reason is None:
                    raise
                uncancel()
                raise Interrupted() from None
            finally:
                job.interruptible = False
                timer.cancel()
                reset_current_task(token)
            if job.interrupt_reason is not None:
                # the code swallowed its cancellation and returned: it was still interrupted
                uncancel()
                raise Interrupted()
            return returned
        thread_call = self.in_thread(_call_bound, ctx, function, (ctx, *args))
        self.arm(job, timeout)
        try:
            # shielded: interrupting the job must not try to cancel the thread's future, which we track
            returned = await asyncio.shield(thread_call)
        except asyncio.CancelledError:
            if job.interrupt_reason is None:
                raise
            uncancel()
            self.abandon_thread(thread_call)
            raise Interrupted() from None
        finally:
            self.disarm(job)
        if job.interrupt_reason is not None:
            raise Interrupted()
        return returned

    def in_thread(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Start ``function(*args)`` in one of our threads, in a copy of the current context."""
        assert self._threads is not None
        return asyncio.get_running_loop().run_in_executor(
            self._threads, contextvars.copy_context().run, function, *args
        )

    def arm(self, job: Job, timeout: float) -> None:
        """From now on the job may be interrupted, and is after ``timeout`` seconds."""
        job.interrupt_reason = None
        job.interruptible = True
        job.timer = asyncio.get_running_loop().call_later(timeout, self.interrupt, job, "timeout")

    @staticmethod
    def disarm(job: Job) -> None:
        job.interruptible = False
        if job.timer is not None:
            job.timer.cancel()

    @staticmethod
    def interrupt(job: Job, reason: str) -> None:
        """Stop the job's user code (if it is running and not already interrupted), giving ``reason``."""
        if not job.interruptible or job.interrupt_reason is not None or job.task is None:
            return
        job.interrupt_reason = reason
        job.task.cancel()

    def abandon_thread(self, future: asyncio.Future[Any]) -> None:
        """An interrupted sync call's thread goes on; count it until it returns."""
        if future.done():
            return
        self.abandoned_threads += 1

        def finished(_: Any) -> None:
            self.abandoned_threads -= 1

        future.add_done_callback(finished)
        if self.abandoned_threads > self._max_abandoned:
            self._on_fatal(AbandonedThreadsError(
                f"{self.abandoned_threads} sync executions overran their timeout and still hold threads "
                f"(max_abandoned_threads={self._max_abandoned}); restart the worker process"
            ))


def _call_bound(ctx: TaskContext, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    token = set_current_task(ctx)
    try:
        return function(*args)
    finally:
        reset_current_task(token)


def uncancel() -> None:
    """We handled a cancellation we caused ourselves; later awaits in this task must not see it."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
