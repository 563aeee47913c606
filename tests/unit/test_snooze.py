"""SnoozeTask's delay is checked where it is raised, and how a snooze reads in the operator surfaces."""

from datetime import timedelta

import pytest

from anchor_py import SnoozeTask
from anchor_py.formatting import snooze_text
from anchor_py.taskcore import InvalidOverride, snooze_of, with_delay


@pytest.mark.parametrize(
    ("delay", "seconds", "text"),
    [("30s", 30, "snooze for 30s"), (" 1h30m ", 5400, "snooze for 1h30m"), ("500ms", 0.5, "snooze for 500ms"),
     (timedelta(minutes=2), 120, "snooze for 0:02:00")],
)
def test_a_delay_is_a_duration_string_or_a_timedelta(delay: str | timedelta, seconds: float, text: str) -> None:
    snooze = SnoozeTask(delay)
    assert snooze.delay.total_seconds() == seconds
    assert str(snooze) == text


@pytest.mark.parametrize(
    ("delay", "message"),
    [
        ("soon", "SnoozeTask('soon'): is not a duration (expected e.g. '30s', '5m', '1h30m')"),
        ("0s", "SnoozeTask('0s'): is not a positive duration (expected e.g. '30s', '5m', '1h30m')"),
        ("100001h", "SnoozeTask('100001h'): is longer than 100000h (expected e.g. '30s', '5m', '1h30m')"),
        (30, "SnoozeTask(30): must be a duration string such as '5m' or a timedelta"),
        (None, "SnoozeTask(None): must be a duration string such as '5m' or a timedelta"),
        (timedelta(seconds=-1), "SnoozeTask(datetime.timedelta(days=-1, seconds=86399)): must be a positive duration"),
        (timedelta(hours=100_001), "SnoozeTask(datetime.timedelta(days=4166, seconds=61200)): is longer than 100000h"),
    ],
)
def test_a_bad_delay_is_a_value_error_naming_it(delay: object, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        SnoozeTask(delay)  # type: ignore[arg-type]
    assert str(raised.value) == message


def test_a_snooze_counts_when_raised_directly_subclassed_or_as_a_cause() -> None:
    class Busy(SnoozeTask):
        pass

    direct, sub = SnoozeTask("1s"), Busy("2s")
    assert snooze_of(direct) is direct and snooze_of(sub) is sub
    try:
        raise RuntimeError("partner busy") from direct
    except RuntimeError as wrapped:
        assert snooze_of(wrapped) is direct
    assert snooze_of(ValueError("no")) is None


def test_overrides_bound_a_timedelta_as_the_sql_core_does() -> None:
    with pytest.raises(InvalidOverride, match="is longer than 100000h"):
        with_delay(timedelta(hours=100_001))


def test_a_snoozed_event_reads_with_its_delay_and_when_it_runs_again() -> None:
    details = {"delay": "00:01:30", "delay_seconds": 90, "run_at": "2026-03-01T14:05:39.5+00:00"}
    assert snooze_text(details) == "for 1m30s, until 2026-03-01 14:05:39"
    assert snooze_text({"delay_seconds": 0.25}) == "for 250ms"
    assert snooze_text({"delay_seconds": 5, "run_at": "not a time"}) == "for 5s"
    assert snooze_text({"delay_seconds": True}) is None
    assert snooze_text(None) is None
