"""An executor of the example's workflow tasks (ProcessChunk, MergeChunks, SplitFile) for workflow tests, in-process
and as `anchor worker --app tests.worker.workflow_app:make_executor --taskgen examples.zgen.taskgen`.

ProcessChunk counts words, or fails for good when its text is "fail"; MergeChunks returns the sums of its
dependencies' results, and records how many dependencies it saw and in which order (``chunks`` and, as
``lines``, the dependencies' chunk numbers folded in order so a wrong order changes it). Counts of executions
per task id are kept in-process (``runs``) for the in-process tests; subprocess tests read the task rows.
"""

from __future__ import annotations

import asyncio
import collections

from anchor_py import DependencyResult, FatalTaskError, TaskContext
from examples.zgen import taskgen


def order_fingerprint(dependencies: tuple[DependencyResult, ...]) -> int:
    """A number that changes when the dependencies' chunks come in another order."""
    value = 0
    for dependency in dependencies:
        value = (value * 31 + dependency.result.chunk + 1) % (2**61 - 1)
    return value


class WorkflowExecutor:
    def __init__(self, chunk_sleep: float = 0.0) -> None:
        self.chunk_sleep = chunk_sleep
        self.runs: collections.Counter[int] = collections.Counter()
        self.seen: dict[int, tuple[DependencyResult, ...]] = {}

    async def execute_process_chunk(
        self, ctx: TaskContext, params: taskgen.ProcessChunkParameters
    ) -> taskgen.ProcessChunkResult:
        self.runs[ctx.task_id] += 1
        if self.chunk_sleep:
            await asyncio.sleep(self.chunk_sleep)
        if params.text == "fail":
            raise FatalTaskError(f"chunk {params.chunk} cannot be read")
        return taskgen.ProcessChunkResult(chunk=params.chunk, lines=params.text.count("\n"),
                                          words=len(params.text.split()))

    async def execute_merge_chunks(
        self, ctx: TaskContext, params: taskgen.MergeChunksParameters
    ) -> taskgen.MergeChunksResult:
        self.runs[ctx.task_id] += 1
        self.seen[ctx.task_id] = ctx.dependencies
        parts = [dependency.result for dependency in ctx.dependencies]
        assert all(isinstance(part, taskgen.ProcessChunkResult) for part in parts), parts
        return taskgen.MergeChunksResult(chunks=len(parts), lines=order_fingerprint(ctx.dependencies),
                                         words=sum(part.words for part in parts))


def make_executor() -> WorkflowExecutor:
    return WorkflowExecutor()
