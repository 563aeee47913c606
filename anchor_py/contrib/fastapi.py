"""anchor-py in a FastAPI app: a lifespan that owns a pool and a worker, and per-request dependencies.

    anchor = AnchorFastAPI(dsn, taskgen.TASKS, taskgen.AsyncTaskRunner, executor=MyExecutor())
    app = FastAPI(lifespan=anchor.lifespan)

    @app.post("/users")
    async def register(tx: Annotated[AsyncConnection, anchor.transaction],
                       tasks: Annotated[taskgen.AsyncTaskRunner, anchor.tasks]) -> dict[str, int]:
        await tx.execute("insert into users ...")
        return {"taskId": await tasks.run_send_email(params)}   # commits with the insert, or not at all

- ``lifespan`` opens an ``AsyncConnectionPool`` (autocommit off), registers the task definitions (so no request
  enqueues before they exist), starts a ``Worker`` when an executor is given and stops it, gracefully, when the
  app shuts down; then it closes the pool.
- ``transaction``: the request's connection, taken from the pool, with a transaction that commits when the
  handler returns and rolls back when it raises. Both happen before the response is sent (the dependency's
  scope is the handler, not the request), so a client never sees a 2xx for work that did not commit.
- ``tasks``: the generated runner bound to that same transaction. ``run_x`` and ``run_x_many`` join it
  (a rollback removes the tasks); ``run_x_with_tx(tx, ...)`` works too.
- ``runner``: the generated runner on the pool, each enqueue committed at once, for code outside a request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar, cast

import psycopg
from fastapi import Depends, FastAPI
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from anchor_py import queries
from anchor_py.runner import AsyncTaskRunnerBase
from anchor_py.taskspec import TaskSet
from anchor_py.worker import Worker, WorkerConfig

__all__ = ["AnchorFastAPI"]

RunnerT = TypeVar("RunnerT", bound=AsyncTaskRunnerBase)


class _TransactionRunner(AsyncTaskRunnerBase):
    """A runner whose ``enqueue`` and ``enqueue_many`` join the transaction open on its connection instead of
    committing their own (the base refuses a connection with a transaction open, to never commit one it did not
    open; here the dependency owns the transaction and commits it after the handler)."""

    async def _fetch_committed(self, query: str, arguments: dict[str, Any]) -> tuple[Any, ...] | None:
        conn = self._db
        assert isinstance(conn, psycopg.AsyncConnection) and not conn.autocommit
        async with conn.cursor(row_factory=tuple_row) as cursor:
            await cursor.execute(query, arguments)
            return await cursor.fetchone()


class AnchorFastAPI(Generic[RunnerT]):
    """The pool, the worker and the request dependencies of one FastAPI app (see the module's docstring).

    ``executor``: the object whose ``execute_*`` methods run the tasks; None runs no worker in this process
    (``anchor worker`` runs them elsewhere). ``pool_kwargs``: passed to ``AsyncConnectionPool`` (min_size,
    max_size, timeout...)."""

    def __init__(
        self,
        dsn: str,
        tasks: TaskSet,
        runner_type: type[RunnerT],
        *,
        executor: object | None = None,
        worker_config: WorkerConfig | None = None,
        register_tasks: bool = True,
        pool_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.dsn = dsn
        self.task_set = tasks
        self.runner_type = runner_type
        self.executor = executor
        self.worker_config = worker_config
        self.register_tasks = register_tasks
        self._pool_kwargs = pool_kwargs or {}
        # the generated runner's typed run_* methods over the joining enqueue, made once
        self._transaction_runner_type = cast(
            type[RunnerT], type(f"Transaction{runner_type.__name__}", (_TransactionRunner, runner_type), {})
        )
        self._pool: AsyncConnectionPool[Any] | None = None
        self.worker: Worker | None = None
        # the dependencies: `Annotated[AsyncConnection, anchor.transaction]`, `Annotated[Runner, anchor.tasks]`;
        # FastAPI calls a dependency once per request, so the runner gets the handler's own connection
        self.transaction: Any = Depends(self._request_transaction, scope="function")

        async def request_tasks(conn: psycopg.AsyncConnection[Any] = self.transaction) -> RunnerT:
            return self._transaction_runner_type(conn)

        self.tasks: Any = Depends(request_tasks, scope="function")

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise RuntimeError("the anchor-py pool is open only while the app runs (FastAPI(lifespan=anchor.lifespan))")
        return self._pool

    @property
    def runner(self) -> RunnerT:
        """The generated runner on the pool: each enqueue commits at once."""
        return self.runner_type(self.pool)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        async with AsyncConnectionPool(self.dsn, open=False, **self._pool_kwargs) as pool:
            await pool.open(wait=True)
            self._pool = pool
            if self.register_tasks:
                async with pool.connection() as conn:
                    await conn.execute(queries.REGISTER_TASKS, self.task_set.registration())
            running: asyncio.Task[None] | None = None
            if self.executor is not None:
                self.worker = Worker(self.dsn, self.executor, self.task_set, self.worker_config)
                running = asyncio.create_task(self.worker.run(), name="anchor-worker")
            try:
                yield
            finally:
                if self.worker is not None and running is not None:
                    # stops claiming, lets running tasks finish within the shutdown grace, hands back the rest
                    await self.worker.stop()
                    await running
                    self.worker = None
                self._pool = None

    async def _request_transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        # pool.connection() commits on a normal exit and rolls back when the handler raises
        async with self.pool.connection() as conn:
            yield conn
