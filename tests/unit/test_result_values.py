"""The worker's checks of a returned value (anchor_py.worker.results.result_json) and set_progress outside a
worker: what is stored, and the one-line error naming the path when the value does not fit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from anchor_py import TaskContext
from anchor_py.worker.results import InvalidResult, result_json
from examples.zgen import taskgen

REPORTS = taskgen.TASKS.by_name("GenerateReport")
NO_RESULT = taskgen.TASKS.by_name("SendEmail")


def test_a_model_or_a_fitting_dict_is_stored_by_alias_without_nulls() -> None:
    model = taskgen.GenerateReportResult(report_count=2)
    assert result_json(REPORTS, model) == {"reportCount": 2}
    assert result_json(REPORTS, {"report_count": 3, "totalBytes": 9, "extra": "dropped"}) == {
        "reportCount": 3,
        "totalBytes": 9,
    }


def test_a_task_without_a_result_stores_nothing_whatever_it_returns() -> None:
    assert result_json(NO_RESULT, None) is None
    assert result_json(NO_RESULT, {"anything": 1}) is None


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ({"reportCount": 1.5}, "$.reportCount: Input should be a valid integer"),
        ({"reportCount": 2**40}, "$.reportCount: Input should be less than or equal to 2147483647"),
        ({}, "$.reportCount: Field required"),
        ([1], "returned list; it returns GenerateReportResult or a dict that fits it"),
        (taskgen.SendEmailParameters(user_id=1, template_id="t"), "returned a SendEmailParameters"),
        ({"reportCount": 1, "note": "a\x00b"}, None),  # an unknown key is dropped, NUL and all
    ],
)
def test_a_value_that_does_not_fit_names_the_path(returned: Any, message: str | None) -> None:
    if message is None:
        assert result_json(REPORTS, returned) == {"reportCount": 1}
        return
    with pytest.raises(InvalidResult) as raised:
        result_json(REPORTS, returned)
    assert str(raised.value).startswith("task GenerateReport ") and message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_set_progress_outside_a_worker_stores_nothing_and_can_be_awaited() -> None:
    ctx = TaskContext(1, "GenerateReport", 1, 1, "default", None, None)
    ctx.set_progress({"done": 1})
    asyncio.run(_await(ctx))
    received: list[dict[str, Any]] = []
    TaskContext(1, "T", 1, 1, "default", None, None, progress_sink=received.append).set_progress({"done": 2})
    assert received == [{"done": 2}]


async def _await(ctx: TaskContext) -> None:
    await ctx.set_progress({"done": 1})
