"""Durations and times as a researcher types them, and as the client prints them.

The client cannot import the service's `annex.core.clock` (it needs Python 3.13 and pydantic), so it reads the
same forms itself. It is stricter in one place: a bare number (`--lease 4`) is refused instead of being
taken as seconds, because nobody means a four-second lease.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo

UTC = timezone.utc
_UNIT_SECONDS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_SECONDS_BY_UNIT = dict(_UNIT_SECONDS)
_HUMAN = re.compile(r"^(?:\d+[wdhms])+$")
_HUMAN_PART = re.compile(r"(\d+)([wdhms])")
_ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
DURATION_FORMS = "90m, 4h, 1d, 1h30m or PT4H"
TIME_FORMS = "2026-11-22T18:00:00Z, 2026-11-22T18:00+01:00 or 2026-11-22 18:00 (local time)"


def parse_duration(text: str) -> timedelta:
    """`90m`, `4h`, `1d`, `1h30m`, `2w`, `PT4H`. Raises ValueError saying what would be accepted."""
    compact = text.strip().lower().replace(" ", "")
    if compact.isdigit():
        number = int(compact)
        if number >= 60:  # a count of seconds or minutes, most likely: say what it would be
            as_seconds = duration_text(timedelta(seconds=number))
            raise ValueError(
                f"'{text}' needs a unit: {number}s is {as_seconds}, {number}m is "
                f"{duration_text(timedelta(minutes=number))}; write the one you mean, such as {as_seconds}"
            )
        raise ValueError(f"'{text}' needs a unit: {compact}h, {compact}m or {compact}d")
    if compact.startswith("-"):
        raise ValueError(f"'{text}' is negative; durations are positive, such as {compact[1:] or '2h'}")
    seconds = 0
    if _HUMAN.match(compact):
        seconds = sum(int(n) * _SECONDS_BY_UNIT[u] for n, u in _HUMAN_PART.findall(compact))
    else:
        iso = _ISO_DURATION.match(compact.upper())
        if not iso or not any(iso.groups()):
            raise ValueError(f"'{text}' is not a duration; use forms like {DURATION_FORMS}")
        days, hours, minutes, secs = (int(g) if g else 0 for g in iso.groups())
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if seconds <= 0:
        raise ValueError(f"'{text}' is not a positive duration")
    return timedelta(seconds=seconds)


def parse_time(text: str, *, local: tzinfo | None = None) -> datetime:
    """An ISO 8601 time. Without a timezone it is read as local time (`local`, default: this machine's).
    Returns an aware UTC datetime."""
    cleaned = text.strip()
    if cleaned[-1:] in ("Z", "z"):
        cleaned = cleaned[:-1] + "+00:00"  # Python 3.9's fromisoformat does not read 'Z'
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(f"'{text}' is not a time; use forms like {TIME_FORMS}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=local) if local is not None else parsed.astimezone()
    return parsed.astimezone(UTC)


def parse_api_time(value: str | None) -> datetime | None:
    """Times in API responses: ISO 8601 UTC with a Z."""
    return parse_time(value) if value else None


def duration_text(value: timedelta, *, units: int | None = None) -> str:
    """`4h`, `1h30m`, `1d2h`. `units` keeps only the most significant ones (`3h12m` rather than
    `3h12m7s`); None keeps them all, which is exact (the form sent to the API)."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    parts: list[str] = []
    for unit, size in _UNIT_SECONDS[1:]:  # days are the largest unit printed
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
        if units is not None and parts and len(parts) == units:
            break
    return "".join(parts) if parts else "0s"


def relative(then: datetime, now: datetime) -> str:
    """`12s ago`, `in 3h12m`, `now`."""
    delta = then - now
    if abs(delta) < timedelta(seconds=1):
        return "now"
    if delta > timedelta(0):
        return f"in {duration_text(delta, units=2)}"
    return f"{duration_text(-delta, units=2)} ago"


def clock_text(value: datetime, tz: tzinfo | None = None) -> str:
    """`2026-11-22 18:00:05 UTC` in `tz` (default: this machine's timezone)."""
    local = value.astimezone(tz) if tz is not None else value.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S %Z").rstrip()


def iso_z(value: datetime) -> str:
    """The API's time form."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
