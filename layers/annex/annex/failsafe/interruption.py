"""Spot interruptions, cloud side: EC2's EventBridge events for this stack's instances, each delivered by
the rule's asynchronous invoke of the interruption function (at least once). A warning (or rebalance
recommendation) is recorded on the instance and in the annex history, and the instance's next heartbeat
answers `drain`; when EC2 reclaims it, its record ends through the store's termination path, so its quota
unit returns exactly once. Instances we did not launch are ignored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from annex.aws.inventory import TAG_ID, TAG_STACK
from annex.core.models import INSTANCE_ID_PATTERN, EndReason, SpotNotice
from annex.core.schedule import EventEnvelope
from annex.store import AnnexStore, InstanceEnd, InstanceKey

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

ACTOR = "ec2-spot"
INTERRUPTION_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
STATE_CHANGE = "EC2 Instance State-change Notification"
RECLAIMED_STATES = frozenset({"shutting-down", "terminated"})
NOTICES = {INTERRUPTION_WARNING: SpotNotice.INTERRUPTION, REBALANCE: SpotNotice.REBALANCE}


class Outcome(StrEnum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    RECLAIMED = "reclaimed"
    NOT_OURS = "not-ours"
    IGNORED = "ignored"


class _Detail(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, defer_build=True)

    instance_id: str = Field(alias="instance-id", pattern=INSTANCE_ID_PATTERN)
    instance_action: str | None = Field(default=None, alias="instance-action")
    state: str | None = None


class Ec2Event(EventEnvelope):
    """An EC2 EventBridge event as the rule delivers it: the envelope (not Powertools' EventBridgeModel,
    whose models package costs ~50 ms of cold import) and the detail we read (the rule's pattern admits
    only these)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    detail: _Detail


def record_notice(
    store: AnnexStore, key: InstanceKey, notice: SpotNotice, *, at: datetime, actor: str, source: str
) -> bool:
    """The one place a spot notice is recorded, whoever saw it first (EC2's event, or the instance's own
    heartbeat): the notice on the instance and a history event, once (a rebalance recommendation may
    still be followed by an interruption warning). False: it was already recorded."""
    detail = f"{key.instance_id}: {source}"
    return store.record_spot_notice(key, notice=notice, at=at, actor=actor, detail=detail)


@dataclass(frozen=True)
class InterruptionHandler:
    store: AnnexStore
    ec2: EC2Client
    stack_name: str
    retention: timedelta

    def annex_of(self, instance_id: str) -> str | None:
        """The annex this stack tagged the instance with, or None if it is not one of ours."""
        try:
            resp = self.ec2.describe_instances(InstanceIds=[instance_id])
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                return None
            raise
        for reservation in resp["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                if tags.get(TAG_STACK) == self.stack_name and tags.get(TAG_ID):
                    return tags[TAG_ID]
        return None

    def handle(self, raw: dict[str, Any], *, now: datetime) -> Outcome:
        event = Ec2Event.model_validate(raw)
        if event.source != "aws.ec2":
            return Outcome.IGNORED
        instance_id = event.detail.instance_id
        annex_id = self.annex_of(instance_id)
        if annex_id is None:
            return Outcome.NOT_OURS
        key = InstanceKey(annex_id, instance_id)
        instances, annexes = self.store.get_instances_with_annexes([key])
        record, annex = instances.get(key), annexes.get(annex_id)
        if record is None or annex is None:
            return Outcome.NOT_OURS  # tagged, but never recorded by our launch: never touch it
        notice = NOTICES.get(event.detail_type)
        if notice is not None:
            source = f"EC2 {notice.value} notice at {event.time.isoformat()}"
            if event.detail.instance_action:
                source += f" (instance-action {event.detail.instance_action})"
            written = record_notice(self.store, key, notice, at=now, actor=ACTOR, source=source)
            return Outcome.RECORDED if written else Outcome.DUPLICATE
        if event.detail_type == STATE_CHANGE and event.detail.state in RECLAIMED_STATES:
            if record.instance.spot_notice is None:
                return Outcome.IGNORED  # not an interruption: the sweeps own other terminations
            ended = self.store.end_instance(
                key,
                owner=annex.annex.owner,
                reason=EndReason.SPOT_INTERRUPTED,
                now=now,
                actor=ACTOR,
                retention=self.retention,
                detail=f"reclaimed by EC2 ({event.detail.state})",
            )
            return Outcome.RECLAIMED if ended is not InstanceEnd.UNCHANGED else Outcome.DUPLICATE
        return Outcome.IGNORED
