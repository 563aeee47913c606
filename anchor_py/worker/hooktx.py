"""The connections an onFailed hook receives as ``tx``.

The hook runs inside the transaction that makes the task's failure final
(``anchor.finish_failure``); the worker commits both together when the hook returns. A hook
that committed or rolled back by itself would split them (a failed task without its hook's
writes, or the reverse), so while the hook runs these connections refuse ``commit`` and
``rollback``. They are real psycopg connections otherwise, so ``run_*_with_tx`` and any
library taking a connection accept them; ``tx.transaction()`` opens a savepoint as usual.
"""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["HookAsyncConnection", "HookConnection", "HookTransactionError"]

_REFUSAL = (
    "the onFailed hook runs inside the transaction that marks the task failed; it may not {action} it "
    "(the worker commits when the hook returns and rolls back when it raises)"
)


class HookTransactionError(psycopg.ProgrammingError):
    """A hook tried to commit or roll back the transaction it was given."""


class HookAsyncConnection(psycopg.AsyncConnection[Any]):
    """An async connection whose commit and rollback are refused while a hook holds it."""

    hook_running = False

    async def commit(self) -> None:
        if self.hook_running:
            raise HookTransactionError(_REFUSAL.format(action="commit"))
        await super().commit()

    async def rollback(self) -> None:
        if self.hook_running:
            raise HookTransactionError(_REFUSAL.format(action="roll back"))
        await super().rollback()


class HookConnection(psycopg.Connection[Any]):
    """The sync twin of HookAsyncConnection, for hooks of a sync executor (run in a thread)."""

    hook_running = False

    def commit(self) -> None:
        if self.hook_running:
            raise HookTransactionError(_REFUSAL.format(action="commit"))
        super().commit()

    def rollback(self) -> None:
        if self.hook_running:
            raise HookTransactionError(_REFUSAL.format(action="roll back"))
        super().rollback()
