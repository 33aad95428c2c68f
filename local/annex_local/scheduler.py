"""EventBridge schedules from template.yaml: each scheduled function runs on its rate, or on a faster
period chosen for local use."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from annex_local.template import events_of_type

log = logging.getLogger("annex_local.scheduler")
_RATE = re.compile(r"^rate\((\d+)\s+(second|minute|hour|day)s?\)$")
_UNIT = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> float:
    match = _RATE.match(expression.strip())
    if not match:
        raise ValueError(f"the local scheduler understands rate(...) expressions only, not {expression!r}")
    return int(match.group(1)) * _UNIT[match.group(2)]


@dataclass
class Schedule:
    function_id: str
    name: str
    period: float
    input: Any = None


def schedules_from_template() -> list[Schedule]:
    found = []
    for kind, key in (("Schedule", "Schedule"), ("ScheduleV2", "ScheduleExpression")):
        for fn, name, props in events_of_type(kind):
            if props.get("State", "ENABLED") == "DISABLED" or props.get("Enabled") is False:
                continue
            found.append(Schedule(fn, name, rate_seconds(str(props[key])), props.get("Input")))
    return found


def scheduled_event(schedule: Schedule, now: datetime, region: str, account: str) -> Any:
    if schedule.input is not None:
        return schedule.input
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{schedule.function_id}-{schedule.name}"],
        "detail": {},
    }


class Scheduler:
    def __init__(
        self,
        schedules: list[Schedule],
        invoke: Callable[[str, Any], Any],
        *,
        period_override: float | None = None,
        region: str = "us-east-1",
        account: str = "123456789012",
    ) -> None:
        self.schedules = schedules
        self.invoke = invoke
        self.period_override = period_override
        self.region = region
        self.account = account
        self.runs = 0
        self.failures = 0

    def period(self, schedule: Schedule) -> float:
        return self.period_override or schedule.period

    def run(self, stop: threading.Event) -> None:
        next_at = {id(s): 0.0 for s in self.schedules}
        start = datetime.now(UTC).timestamp()
        while not stop.is_set():
            now = datetime.now(UTC)
            elapsed = now.timestamp() - start
            for schedule in self.schedules:
                if elapsed >= next_at[id(schedule)]:
                    next_at[id(schedule)] = elapsed + self.period(schedule)
                    self.fire(schedule, now)
            wait = min(next_at.values(), default=1.0) - (datetime.now(UTC).timestamp() - start)
            stop.wait(max(0.05, min(wait, 1.0)))

    def fire(self, schedule: Schedule, now: datetime) -> None:
        self.runs += 1
        try:
            self.invoke(schedule.function_id, scheduled_event(schedule, now, self.region, self.account))
        except Exception:
            # EventBridge would retry and then dead-letter; the next period runs it again regardless.
            self.failures += 1
            log.exception("%s (%s) failed", schedule.function_id, schedule.name)
