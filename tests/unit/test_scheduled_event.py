"""The sweeps and the prices refresh read their EventBridge event with `ScheduledEvent`, not Powertools'
parser package (whose import builds every event model Powertools ships). Powertools' own
`EventBridgeModel` judges it: the same events accepted with the same values, the same ones refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from annex.core.schedule import ScheduledEvent
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import ValidationError

EVENTS = Path(__file__).resolve().parents[2] / "events"
SCHEDULES = sorted(EVENTS.glob("*-schedule.json"))


def schedule(**changes: Any) -> dict[str, Any]:
    event = json.loads(SCHEDULES[0].read_text())
    for key, value in changes.items():
        if value is None:
            event.pop(key)
        else:
            event[key] = value
    return event


CASES = [
    *[json.loads(p.read_text()) for p in SCHEDULES],
    schedule(source="aws.scheduler", detail="{}"),  # Scheduler without a payload
    schedule(**{"replay-name": "replay-1"}),
    schedule(extra_field="ignored"),
    schedule(time="2026-11-22T18:00:00.123+02:00"),
    # refused
    schedule(time="yesterday"),
    schedule(id=None),
    schedule(**{"detail-type": None}),
    schedule(detail="{}"),  # a string detail only from Scheduler
    schedule(resources="arn:aws:events:us-east-1:123456789012:rule/r"),
    schedule(account=123456789012),
    {},
]


def test_the_template_schedules_have_events():
    assert len(SCHEDULES) >= 3  # lease-check, idle-reap, prices


@pytest.mark.parametrize("event", CASES)
def test_accepts_and_refuses_what_powertools_eventbridge_model_does(event: dict[str, Any]):
    try:
        theirs: dict[str, Any] | None = EventBridgeModel.model_validate(event).model_dump()
    except ValidationError:
        theirs = None
    try:
        ours: dict[str, Any] | None = ScheduledEvent.model_validate(event).model_dump()
    except ValidationError:
        ours = None
    assert ours == theirs
