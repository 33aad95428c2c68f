"""The event an EventBridge schedule delivers to a function (the sweeps, the prices refresh).

The fields and rules of Powertools' `EventBridgeModel`, without its parser package: importing
`aws_lambda_powertools.utilities.parser.models` builds every event model Powertools ships (ALB, SQS,
Kinesis, ...) at each sweep's cold start, for the one model a schedule needs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EventEnvelope(BaseModel):
    """The envelope every EventBridge event carries (the fields of Powertools' EventBridgeModel); each
    kind of event adds its `detail`."""

    model_config = ConfigDict(populate_by_name=True, defer_build=True)

    version: str
    id: str
    source: str
    account: str
    time: datetime
    region: str
    resources: list[str]
    detail_type: str = Field(alias="detail-type")


class ScheduledEvent(EventEnvelope):
    """An EventBridge event (rules and Scheduler). Invalid input raises pydantic's ValidationError, as
    Powertools' `event_parser` does."""

    detail: dict[str, Any]
    replay_name: str | None = Field(default=None, alias="replay-name")

    @field_validator("detail", mode="before")
    @classmethod
    def _scheduler_detail(cls, value: object, info: Any) -> object:
        # EventBridge Scheduler sends the detail as the string "{}" when the schedule has no payload.
        return {} if info.data.get("source") == "aws.scheduler" and value == "{}" else value
