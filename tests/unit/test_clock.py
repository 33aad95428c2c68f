from datetime import UTC, datetime, timedelta

import pytest
from annex.core.clock import format_duration, parse_duration, parse_time, to_iso


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", timedelta(minutes=90)),
        ("4h", timedelta(hours=4)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2H", timedelta(hours=2)),
        ("PT4H", timedelta(hours=4)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("3600", timedelta(hours=1)),
        (900, timedelta(minutes=15)),
    ],
)
def test_durations_researchers_type_are_understood(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "four hours", "4x", "-1h", "0m", "0", "P", "PT", True, None, [1], "99999d"]
)
def test_bad_durations_are_refused_with_a_hint(bad):
    with pytest.raises(ValueError, match=r"duration|positive|ten years"):
        parse_duration(bad)


def test_format_duration_round_trips_the_short_form():
    for text in ("45s", "15m", "4h", "1h30m", "1d2h"):
        assert format_duration(parse_duration(text)) == text


def test_times_need_a_timezone_and_come_back_in_utc():
    assert parse_time("2026-11-22T18:00:00+01:00") == datetime(2026, 11, 22, 17, 0, tzinfo=UTC)
    assert to_iso(parse_time("2026-11-22T18:00:00Z")) == "2026-11-22T18:00:00Z"
    with pytest.raises(ValueError, match="timezone"):
        parse_time("2026-11-22T18:00:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("tomorrow")
