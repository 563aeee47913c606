"""ctx.dependencies as the worker builds it from the claim's JSON: typed by the dependency task's result model when
the worker's task set has one and the stored value fits it, as stored otherwise, and empty without dependencies."""

from __future__ import annotations

from typing import Any

from anchor_py import DependencyResult
from anchor_py.worker.job import Job, handlers_for
from examples.zgen import taskgen


class Merge:
    async def execute_merge_chunks(self, ctx: Any, params: Any) -> None: ...


def job(dependencies: Any) -> Job:
    handler = handlers_for(Merge(), taskgen.TASKS)["MergeChunks"]
    return Job(id=9, handler=handler, params={"path": "f"}, attempt=1, max_attempts=1, queue="default", timeout=1.0,
               deadline=None, scheduled_at=None, dependencies=dependencies)


def test_results_are_typed_when_they_fit_and_kept_as_stored_otherwise() -> None:
    ctx = job([
        {"task_id": 3, "task_name": "ProcessChunk", "result": {"chunk": 0, "lines": 2, "words": 5}},
        {"task_id": 4, "task_name": "ProcessChunk", "result": {"chunk": "zero"}},  # the definition changed since
        {"task_id": 5, "task_name": "SendEmail", "result": None},  # a task without a result
        {"task_id": 6, "task_name": "NotInThisTaskSet", "result": {"x": 1}},
    ]).context()
    assert ctx.dependencies == (
        DependencyResult(3, "ProcessChunk", taskgen.ProcessChunkResult(chunk=0, lines=2, words=5)),
        DependencyResult(4, "ProcessChunk", {"chunk": "zero"}),
        DependencyResult(5, "SendEmail", None),
        DependencyResult(6, "NotInThisTaskSet", {"x": 1}),
    )


def test_a_task_without_dependencies_has_an_empty_tuple() -> None:
    assert job(None).context().dependencies == ()
