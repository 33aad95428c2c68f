"""Durations and times as researchers type them, and as the client prints them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from annex_client.timefmt import (
    clock_text,
    duration_text,
    iso_z,
    parse_duration,
    parse_time,
    relative,
)

NOW = datetime(2026, 11, 22, 14, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90m", 5400),
        ("4h", 14400),
        ("1d", 86400),
        ("1h30m", 5400),
        ("2w", 1209600),
        ("45s", 45),
        ("1H30M", 5400),
        (" 1h 30m ", 5400),
        ("PT4H", 14400),
        ("P1DT2H", 93600),
        ("pt90m", 5400),
    ],
)
def test_human_and_iso_durations_are_read(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_a_bare_number_is_refused_with_the_forms_that_would_work():
    with pytest.raises(ValueError, match=r"'4' needs a unit: 4h, 4m or 4d"):
        parse_duration("4")


@pytest.mark.parametrize("text", ["", "abc", "4 hours", "h4", "1.5h", "P", "PT"])
def test_a_non_duration_is_refused_naming_the_accepted_forms(text):
    with pytest.raises(ValueError, match="90m, 4h, 1d"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0m", "0h0m", "PT0S"])
def test_a_zero_duration_is_refused(text):
    with pytest.raises(ValueError, match="positive"):
        parse_duration(text)


def test_times_with_a_z_or_an_offset_become_utc():
    assert parse_time("2026-11-22T18:00:00Z") == datetime(2026, 11, 22, 18, tzinfo=UTC)
    assert parse_time("2026-11-22T19:30+01:00") == datetime(2026, 11, 22, 18, 30, tzinfo=UTC)


def test_a_time_without_zone_is_local_time():
    berlin_winter = timezone(timedelta(hours=1))
    assert parse_time("2026-11-22 18:00", local=berlin_winter) == datetime(2026, 11, 22, 17, tzinfo=UTC)


def test_a_non_time_is_refused_naming_the_accepted_forms():
    with pytest.raises(ValueError, match="2026-11-22T18:00:00Z"):
        parse_time("tomorrow at six")


@pytest.mark.parametrize(
    ("seconds", "exact", "short"),
    [
        (14400, "4h", "4h"),
        (5400, "1h30m", "1h30m"),
        (11527, "3h12m7s", "3h12m"),
        (93600, "1d2h", "1d2h"),
        (45, "45s", "45s"),
        (0, "0s", "0s"),
    ],
)
def test_durations_print_exactly_or_to_two_units(seconds, exact, short):
    assert duration_text(timedelta(seconds=seconds)) == exact
    assert duration_text(timedelta(seconds=seconds), units=2) == short


def test_durations_printed_exactly_read_back_to_the_same_value():
    for seconds in (60, 5400, 86399, 93600, 1209600):
        assert parse_duration(duration_text(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


def test_relative_times_read_naturally():
    assert relative(NOW - timedelta(seconds=12), NOW) == "12s ago"
    assert relative(NOW + timedelta(hours=3, minutes=12, seconds=5), NOW) == "in 3h12m"
    assert relative(NOW, NOW) == "now"


def test_clock_times_print_in_the_given_zone_with_its_name():
    assert clock_text(NOW, UTC) == "2026-11-22 14:00:00 UTC"
    assert clock_text(NOW, timezone(timedelta(hours=1), "CET")) == "2026-11-22 15:00:00 CET"
    assert iso_z(datetime(2026, 11, 22, 15, 0, tzinfo=timezone(timedelta(hours=1)))) == "2026-11-22T14:00:00Z"
