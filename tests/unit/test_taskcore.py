import threading
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from datetime import UTC, datetime, timedelta

import pytest

import anchor_py
from anchor_py.taskcore import (
    MAX_DEPENDENCIES,
    DependencyResult,
    FatalTaskError,
    InvalidOverride,
    RetryTaskWithoutErrorEvent,
    TaskContext,
    _bind_task,
    current_task,
    enqueue_arguments,
    is_fatal,
    is_retry_without_event,
    with_delay,
    with_depends_on,
    with_parent,
    with_priority,
    with_queue,
    with_retry_policy,
    with_run_at,
    with_timeout,
    with_unique_tag,
)

RUN_AT = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_overrides_map_onto_enqueue_keyword_arguments() -> None:
    arguments = enqueue_arguments(
        (
            with_retry_policy("1m,2m", 3),
            with_timeout("30m"),
            with_unique_tag("user-123-daily"),
            with_delay("10m"),
            with_priority(-5),
            with_queue("emails"),
        )
    )
    assert arguments == {
        "retry_intervals": [timedelta(minutes=1), timedelta(minutes=2)],
        "max_attempts": 3,
        "timeout": timedelta(minutes=30),
        "unique_tag": "user-123-daily",
        "delay": timedelta(minutes=10),
        "priority": -5,
        "queue": "emails",
    }


@pytest.mark.parametrize(("max_attempts", "expected"), [(True, -1), (False, 1), (-1, -1), (1, 1), (7, 7)])
def test_retry_policy_attempts_accept_the_guides_bool(max_attempts: int | bool, expected: int) -> None:
    arguments = enqueue_arguments((with_retry_policy("1h", max_attempts),))
    assert arguments["max_attempts"] == expected
    assert arguments["retry_intervals"] == [timedelta(hours=1)]


def test_retry_policy_defaults_to_unlimited_attempts() -> None:
    assert enqueue_arguments((with_retry_policy(timedelta(seconds=5)),))["max_attempts"] == -1


def test_later_overrides_win_and_delay_replaces_run_at() -> None:
    assert enqueue_arguments((with_timeout("1m"), with_timeout("2m"))) == {"timeout": timedelta(minutes=2)}
    assert enqueue_arguments((with_run_at(RUN_AT), with_delay("5s"))) == {"delay": timedelta(seconds=5)}
    assert enqueue_arguments((with_delay("5s"), with_run_at(RUN_AT))) == {"run_at": RUN_AT}


@pytest.mark.parametrize(
    ("make", "override", "bad"),
    [
        (lambda: with_retry_policy("5x"), "with_retry_policy", "5x"),
        (lambda: with_retry_policy("1m", 0), "with_retry_policy", "0"),
        (lambda: with_retry_policy("1m", -2), "with_retry_policy", "-2"),
        (lambda: with_retry_policy(5), "with_retry_policy", "5"),
        (lambda: with_timeout("0s"), "with_timeout", "0s"),
        (lambda: with_timeout(timedelta(0)), "with_timeout", "timedelta(0)"),
        (lambda: with_timeout(30), "with_timeout", "30"),
        (lambda: with_delay("soon"), "with_delay", "soon"),
        (lambda: with_delay(timedelta(seconds=-1)), "with_delay", "timedelta(days=-1"),
        (lambda: with_run_at(datetime(2030, 1, 1)), "with_run_at", "2030"),
        (lambda: with_run_at("2030-01-01T00:00:00Z"), "with_run_at", "2030-01-01T00:00:00Z"),
        (lambda: with_unique_tag(""), "with_unique_tag", "''"),
        (lambda: with_unique_tag("   "), "with_unique_tag", "'   '"),
        (lambda: with_priority(True), "with_priority", "True"),
        (lambda: with_priority(2**31), "with_priority", "2147483648"),
        (lambda: with_priority(1.5), "with_priority", "1.5"),
        (lambda: with_queue(""), "with_queue", "''"),
        (lambda: with_queue(" emails"), "with_queue", "' emails'"),
        (lambda: with_depends_on(), "with_depends_on", "give at least one task id"),
        (lambda: with_depends_on(1, 0), "with_depends_on", "0"),
        (lambda: with_depends_on(-4), "with_depends_on", "-4"),
        (lambda: with_depends_on(True), "with_depends_on", "True"),
        (lambda: with_depends_on("12"), "with_depends_on", "'12'"),
        (lambda: with_depends_on(2**63), "with_depends_on", "9223372036854775808"),
        (lambda: with_depends_on([1, 2]), "with_depends_on", "with_depends_on(*ids)"),
        (lambda: with_depends_on(*range(1, MAX_DEPENDENCIES + 2)), "with_depends_on", "at most 100000"),
        (lambda: with_parent(0), "with_parent", "0"),
        (lambda: with_parent(None), "with_parent", "None"),
        (lambda: with_parent(3.0), "with_parent", "3.0"),
    ],
)
def test_bad_overrides_raise_at_call_time_naming_override_and_value(make, override: str, bad: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidOverride) as raised:
        make()
    assert isinstance(raised.value, ValueError)
    assert raised.value.override == override
    assert str(raised.value).startswith(f"{override}(")
    assert bad in str(raised.value)


def test_dependencies_and_parent_become_enqueue_arguments() -> None:
    assert enqueue_arguments((with_depends_on(3, 1, 3, 2), with_parent(9))) == {"depends_on": [3, 1, 2],
                                                                               "parent_id": 9}
    assert enqueue_arguments((with_depends_on(1), with_depends_on(5))) == {"depends_on": [5]}  # the later wins
    assert repr(with_depends_on(*range(1, 10))) == "<TaskOverride with_depends_on(1, 2, 3, 4, 5, ... (9 ids))>"


def test_enqueue_arguments_refuses_things_that_are_not_overrides() -> None:
    with pytest.raises(TypeError, match="with_\\* function"):
        enqueue_arguments(("30m",))  # type: ignore[arg-type]


class PaymentDeclined(FatalTaskError):
    pass


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        return outer


def test_error_kinds_are_recognised_directly_by_subclass_and_through_the_cause_chain() -> None:
    assert is_fatal(FatalTaskError())
    assert is_fatal(PaymentDeclined())
    assert is_fatal(_raised_from(PaymentDeclined()))
    assert is_retry_without_event(_raised_from(_raised_from(RetryTaskWithoutErrorEvent())))
    assert not is_fatal(RetryTaskWithoutErrorEvent())
    assert not is_retry_without_event(FatalTaskError())
    assert not is_fatal(ValueError())


def test_an_implicit_context_is_not_a_cause() -> None:
    try:
        try:
            raise FatalTaskError()
        except FatalTaskError:
            raise ValueError("while handling") from None
    except ValueError as error:
        assert not is_fatal(error)


def test_cause_cycles_terminate() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert not is_fatal(first)


CTX = TaskContext(
    task_id=7, task_name="SendEmail", attempt=2, max_attempts=-1, queue="default", deadline=None, scheduled_at=None
)


def test_current_task_is_bound_only_inside_the_block() -> None:
    with pytest.raises(LookupError, match="outside a task execution"):
        current_task()
    with _bind_task(CTX):
        assert anchor_py.current_task() is CTX
    with pytest.raises(LookupError):
        current_task()


def test_current_task_reaches_threads_that_copy_the_context() -> None:
    with _bind_task(CTX), ThreadPoolExecutor(max_workers=1) as pool:
        seen = pool.submit(copy_context().run, current_task).result()
    assert seen is CTX


def test_concurrent_tasks_each_see_their_own_context() -> None:
    seen: dict[int, int] = {}

    def run(task_id: int) -> None:
        ctx = TaskContext(task_id, "T", 1, 1, "default", None, None)
        with _bind_task(ctx):
            barrier.wait()
            seen[task_id] = current_task().task_id

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=run, args=(task_id,)) for task_id in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {1: 1, 2: 2}


def test_task_context_is_frozen() -> None:
    with pytest.raises(AttributeError):
        CTX.attempt = 3  # type: ignore[misc]


def test_the_package_exports_the_task_api() -> None:
    assert anchor_py.FatalTaskError is FatalTaskError
    assert anchor_py.RetryTaskWithoutErrorEvent is RetryTaskWithoutErrorEvent
    assert anchor_py.TaskContext is TaskContext
    assert anchor_py.DependencyResult is DependencyResult
    assert CTX.dependencies == ()
