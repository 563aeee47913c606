from datetime import timedelta

import pytest

from anchor_py.durations import InvalidDuration, parse_duration, parse_intervals


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5s", timedelta(seconds=5)),
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("1m1m", timedelta(minutes=2)),
        ("  10s  ", timedelta(seconds=10)),
        ("0.0000015s", timedelta(microseconds=2)),  # half a microsecond rounds away from zero
        ("100000h", timedelta(hours=100_000)),
    ],
)
def test_parses_valid_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "5",
        "s",
        "5x",
        "-5s",
        "+5s",
        "5 s",
        "1h 30m",
        "5S",
        ".5s",
        "5.s",
        "0s",
        "0.0000004s",
        "1d",
        "100001h",
        "５s",
        "\t5s",
        "5s,",
    ],
)
def test_rejects_invalid_durations_naming_the_text(text: str) -> None:
    with pytest.raises(InvalidDuration) as raised:
        parse_duration(text)
    assert repr(text) in str(raised.value)


def test_rejects_non_strings() -> None:
    with pytest.raises(InvalidDuration, match="is not a string"):
        parse_duration(5)  # type: ignore[arg-type]


def test_parses_backoff_lists_in_order() -> None:
    assert parse_intervals("1m,2m, 4m ,8m") == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert parse_intervals("30s") == [timedelta(seconds=30)]


@pytest.mark.parametrize(
    ("text", "entry"), [("1m,,2m", "entry 2 ('')"), ("1m,5x", "entry 2 ('5x')"), ("0s,1m", "entry 1")]
)
def test_rejects_lists_naming_the_bad_entry(text: str, entry: str) -> None:
    with pytest.raises(InvalidDuration) as raised:
        parse_intervals(text)
    assert entry in str(raised.value)
    assert raised.value.text == text
