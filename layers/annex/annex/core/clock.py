"""Time helpers. Functions that decide by the clock take `now` as a parameter; only handlers call utcnow()."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_HUMAN = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
_HUMAN_FULL = re.compile(r"^\s*(?:\d+\s*[smhdw]\s*)+$", re.IGNORECASE)
_ISO = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?$",
    re.IGNORECASE,
)
MAX_DURATION = timedelta(days=3650)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC, truncated to whole seconds."""
    return datetime.now(UTC).replace(microsecond=0)


def parse_duration(value: object) -> timedelta:
    """Parse `90m`, `4h`, `1d`, `1h30m`, ISO 8601 `PT4H`, or a number of seconds.

    Raises ValueError with a message a researcher can act on.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError("expected a duration such as 90m, 4h or 1d")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError("expected a duration such as 90m, 4h or 1d")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError("a duration must be less than ten years")
    return timedelta(seconds=int(seconds))


def _parse_duration_text(text: str) -> float:
    text = text.strip()
    if text.isdigit():
        return float(text)
    if _HUMAN_FULL.match(text):
        return float(sum(int(n) * _UNIT_SECONDS[u.lower()] for n, u in _HUMAN.findall(text)))
    iso = _ISO.match(text)
    if iso and any(iso.groupdict().values()):
        parts = {k: int(v) if v else 0 for k, v in iso.groupdict().items()}
        return float(parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"])
    raise ValueError(f"'{text}' is not a duration; use forms like 90m, 4h, 1d or 1h30m")


def format_duration(value: timedelta) -> str:
    """The shortest human form: 4h, 1h30m, 1d2h, 45s."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def parse_time(value: object) -> datetime:
    """Parse an ISO 8601 time with a timezone (`2026-11-22T18:00:00Z`). A naive time is refused."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
        except ValueError as exc:
            raise ValueError(f"'{value}' is not an ISO 8601 time such as 2026-11-22T18:00:00Z") from exc
    else:
        raise ValueError("expected an ISO 8601 time such as 2026-11-22T18:00:00Z")
    if parsed.tzinfo is None:
        raise ValueError("the time needs a timezone, such as 2026-11-22T18:00:00Z or +01:00")
    return parsed.astimezone(UTC).replace(microsecond=0)


def to_iso(value: datetime) -> str:
    """Render as ISO 8601 UTC with a Z suffix."""
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_epoch(value: datetime) -> int:
    return int(value.timestamp())


def from_epoch(value: float) -> datetime:
    return datetime.fromtimestamp(int(value), UTC)
