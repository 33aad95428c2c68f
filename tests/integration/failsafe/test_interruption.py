"""Spot interruptions, cloud side (moto): real sample EventBridge events (events/spot-*.json) for the
fleet's instances, each the whole event of one asynchronous invocation (as the rule delivers it), to the
interruption function and its domain at a moved clock."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from annex.core.models import EndReason, HeartbeatAction, HeartbeatRequest, InstanceState, SpotNotice
from annex.failsafe.heartbeat import HeartbeatService
from annex.failsafe.interruption import InterruptionHandler, Outcome

from tests.integration.conftest import ALICE, STACK, run_tagged_instances
from tests.integration.failsafe.conftest import Fleet, Handler, _handler, instance_arn, load_event


def event_for(name: str, instance_id: str) -> dict[str, Any]:
    event = copy.deepcopy(load_event(name))
    event["detail"]["instance-id"] = instance_id
    return event


def handler_for(fleet: Fleet) -> InterruptionHandler:
    return InterruptionHandler(
        store=fleet.store, ec2=fleet.ec2_client, stack_name=STACK, retention=timedelta(days=30)
    )


def history(fleet: Fleet, annex_id: str) -> list[tuple[str, str]]:
    return [(e.action, e.detail) for e in fleet.store.get_detail(annex_id).history]


def test_warning_drains_records_and_a_duplicate_changes_nothing(fleet: Fleet) -> None:
    annex, ids = fleet.annex(count=2)
    victim, other = ids
    handler = handler_for(fleet)
    at = fleet.t0 + timedelta(minutes=30)
    assert fleet.heartbeat(annex, victim, at=at, claimed=4).action is HeartbeatAction.RUN

    warning = event_for("spot-interruption-warning", victim)
    assert handler.handle(warning, now=at + timedelta(seconds=5)) is Outcome.RECORDED
    before = history(fleet, annex.id)
    record = fleet.instance(annex.id, victim).instance
    assert record.spot_notice is SpotNotice.INTERRUPTION
    assert any(action == "spot-interruption" and victim in detail for action, detail in before)

    answer = fleet.heartbeat(annex, victim, at=at + timedelta(minutes=1), claimed=4)
    assert answer.action is HeartbeatAction.DRAIN
    assert (
        fleet.heartbeat(annex, other, at=at + timedelta(minutes=1), claimed=4).action is HeartbeatAction.RUN
    )

    # The same event again (EventBridge and Lambda's retries deliver at least once), later: nothing changes.
    assert handler.handle(warning, now=at + timedelta(minutes=2)) is Outcome.DUPLICATE
    assert history(fleet, annex.id) == before
    assert fleet.instance(annex.id, victim).instance.spot_notice_at == record.spot_notice_at


def test_reclaim_ends_the_record_and_returns_the_quota_unit_once(fleet: Fleet) -> None:
    annex, ids = fleet.annex(count=2)
    victim = ids[0]
    handler = handler_for(fleet)
    at = fleet.t0 + timedelta(minutes=30)
    handler.handle(event_for("spot-interruption-warning", victim), now=at)
    quota, held = fleet.quota(), fleet.held(annex.id)

    gone = event_for("spot-state-terminated", victim)
    assert handler.handle(gone, now=at + timedelta(minutes=2)) is Outcome.RECLAIMED
    ended = fleet.instance(annex.id, victim).instance
    assert ended.state is InstanceState.TERMINATED
    assert ended.end_reason is EndReason.SPOT_INTERRUPTED
    assert (fleet.quota(), fleet.held(annex.id)) == (quota - 1, held - 1)

    assert handler.handle(gone, now=at + timedelta(minutes=3)) is Outcome.DUPLICATE
    assert (fleet.quota(), fleet.held(annex.id)) == (quota - 1, held - 1)


def test_a_rebalance_then_a_warning_are_both_recorded_once(fleet: Fleet) -> None:
    annex, ids = fleet.annex(count=1)
    handler = handler_for(fleet)
    at = fleet.t0 + timedelta(minutes=30)
    rebalance = event_for("spot-rebalance-recommendation", ids[0])
    assert handler.handle(rebalance, now=at) is Outcome.RECORDED
    assert handler.handle(event_for("spot-interruption-warning", ids[0]), now=at) is Outcome.RECORDED
    assert handler.handle(rebalance, now=at) is Outcome.DUPLICATE
    assert fleet.instance(annex.id, ids[0]).instance.spot_notice is SpotNotice.INTERRUPTION


def test_events_for_instances_that_are_not_ours_are_ignored(fleet: Fleet) -> None:
    annex, _ = fleet.annex(count=1)
    handler = handler_for(fleet)
    at = fleet.t0 + timedelta(minutes=30)
    foreign = run_tagged_instances(fleet.ec2_client, annex.id, 1, stack="someone-elses-stack")[0]
    untagged = fleet.ec2_client.run_instances(
        ImageId=fleet.ec2_client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"],
        MinCount=1,
        MaxCount=1,
    )["Instances"][0]["InstanceId"]
    unrecorded = run_tagged_instances(fleet.ec2_client, annex.id, 1)[0]  # our tags, never recorded
    before = history(fleet, annex.id)
    for instance_id in (foreign, untagged, unrecorded, "i-0000000000000dead"):
        for name in ("spot-interruption-warning", "spot-state-terminated"):
            assert handler.handle(event_for(name, instance_id), now=at) is Outcome.NOT_OURS
    assert history(fleet, annex.id) == before
    assert fleet.quota(ALICE) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"source": "aws.ec2", "detail": {}},  # no envelope, no instance
        {"Records": [{"messageId": "m1", "body": "{}"}]},  # an SQS batch: not what the rule sends
        "envelope-only",  # an EventBridge envelope whose detail names no instance
    ],
)
def test_an_event_it_cannot_read_fails_the_invocation_and_changes_nothing(
    fleet: Fleet, interruption_fn: Handler, bad: Any
) -> None:
    # Given an annex, when the function is invoked with something that is not an EC2 event of the rule's
    # shape, the invocation fails (Lambda retries it, then dead-letters it) and nothing is recorded.
    annex, ids = fleet.annex(count=1)
    if bad == "envelope-only":
        bad = event_for("spot-interruption-warning", ids[0])
        del bad["detail"]["instance-id"]
    before = history(fleet, annex.id)
    with pytest.raises(ValueError, match="validation error"):
        interruption_fn(bad, at=fleet.t0)
    assert history(fleet, annex.id) == before
    assert fleet.instance(annex.id, ids[0]).instance.spot_notice is None


@pytest.fixture
def interruption_fn(ddb, ec2, monkeypatch) -> Iterator[Handler]:
    yield from _handler("interruption", "InterruptionFunction", monkeypatch)


def test_the_deployed_handler_drains_then_ends_the_record(fleet: Fleet, interruption_fn: Handler) -> None:
    annex, ids = fleet.annex(count=2)
    at = fleet.t0 + timedelta(minutes=30)
    warning = event_for("spot-interruption-warning", ids[0])
    assert interruption_fn(warning, at=at) == {"outcome": "recorded"}
    assert (
        fleet.heartbeat(annex, ids[0], at=at + timedelta(seconds=30), claimed=1).action
        is HeartbeatAction.DRAIN
    )
    quota = fleet.quota()
    gone = event_for("spot-state-terminated", ids[0])
    assert interruption_fn(gone, at=at + timedelta(minutes=2)) == {"outcome": "reclaimed"}
    assert fleet.instance(annex.id, ids[0]).instance.state is InstanceState.TERMINATED
    assert fleet.quota() == quota - 1
    # a retry of the same invocation (Lambda's, or EventBridge's): nothing more is returned to the quota
    assert interruption_fn(gone, at=at + timedelta(minutes=3)) == {"outcome": "duplicate"}
    assert fleet.quota() == quota - 1


# --- the instance's own notice (its heartbeat's spot_notice): recorded in the same one place ----------


def beat_with_notice(fleet: Fleet, annex, instance_id: str, notice: str, *, at) -> HeartbeatAction:
    service = HeartbeatService(fleet.store, fleet.heartbeat_settings)
    request = HeartbeatRequest(
        instance_id=instance_id, annex_id=annex.id, claimed_slots=0, total_slots=4, spot_notice=notice
    )
    return service.report(instance_arn(instance_id), request, now=at).action


def test_the_instances_own_notice_is_recorded_once_whichever_path_comes_first(fleet: Fleet) -> None:
    annex, (victim, other) = fleet.annex(count=2)
    at = fleet.t0 + timedelta(minutes=30)

    assert beat_with_notice(fleet, annex, victim, "interruption", at=at) is HeartbeatAction.DRAIN
    record = fleet.instance(annex.id, victim).instance
    assert record.spot_notice is SpotNotice.INTERRUPTION
    assert record.spot_notice_at == at
    # The next heartbeat repeats the notice, and EC2's own event arrives: neither records it again.
    assert (
        beat_with_notice(fleet, annex, victim, "interruption", at=at + timedelta(minutes=1))
        is HeartbeatAction.DRAIN
    )
    warning = event_for("spot-interruption-warning", victim)
    assert handler_for(fleet).handle(warning, now=at + timedelta(minutes=1)) is Outcome.DUPLICATE
    notices = [d for a, d in history(fleet, annex.id) if a == "spot-interruption"]
    assert len(notices) == 1
    assert victim in notices[0]
    assert fleet.store.get_annex(annex.id).interrupted_count == 1
    assert (
        fleet.heartbeat(annex, other, at=at + timedelta(minutes=1), claimed=4).action is HeartbeatAction.RUN
    )


def test_the_instance_reports_a_rebalance_then_ec2_warns(fleet: Fleet) -> None:
    annex, (victim,) = fleet.annex(count=1)
    at = fleet.t0 + timedelta(minutes=30)
    beat_with_notice(fleet, annex, victim, "rebalance", at=at)
    assert fleet.instance(annex.id, victim).instance.spot_notice is SpotNotice.REBALANCE
    assert fleet.store.get_annex(annex.id).interrupted_count == 0
    warning = event_for("spot-interruption-warning", victim)
    assert handler_for(fleet).handle(warning, now=at + timedelta(minutes=1)) is Outcome.RECORDED
    assert fleet.instance(annex.id, victim).instance.spot_notice is SpotNotice.INTERRUPTION
    assert fleet.store.get_annex(annex.id).interrupted_count == 1
