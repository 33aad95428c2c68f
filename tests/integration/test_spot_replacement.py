"""Replacing interrupted spot instances (moto): a spot annex requested with `replace`, launched through
the table's stream; EC2's sample events (events/spot-*.json) delivered to the interruption function's
domain at a moved clock; the reclaim's record change delivered back to the launch function through the
stream, as the template's FilterCriteria pass it. moto ignores EC2 client tokens, so "never twice" below
is proven by our own guards (the conditional claim, adopting what EC2 has and the table does not)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from annex.aws.inventory import Ec2Inventory
from annex.core.clock import parse_time, utcnow
from annex.core.config import HeartbeatSettings, IdleReapSettings
from annex.core.models import HeartbeatRequest
from annex.failsafe.heartbeat import HeartbeatService
from annex.failsafe.idle_reap import run_idle_reap
from annex.failsafe.interruption import InterruptionHandler, Outcome
from annex.store import AnnexStore, InstanceKey, ReplacementClaim
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from tests.integration.conftest import ADMIN, ALICE, INSTANCE_PROFILE_ARN, STACK, TABLE
from tests.integration.failsafe.conftest import function_env, instance_arn
from tests.integration.test_launch import detail, faults, history, instances_of, request, tags_of

__all__ = ["faults"]  # the fixture, shared with the launch tests

EVENTS = Path(__file__).resolve().parents[2] / "events"


def event_for(name: str, instance_id: str) -> dict[str, Any]:
    event = copy.deepcopy(json.loads((EVENTS / f"{name}.json").read_text()))
    event["detail"]["instance-id"] = instance_id
    return event


@pytest.fixture
def interruptions(ddb, ec2) -> InterruptionHandler:
    return InterruptionHandler(
        store=AnnexStore(ddb, TABLE), ec2=ec2, stack_name=STACK, retention=timedelta(days=30)
    )


def at(when: datetime) -> Callable[[], datetime]:
    return lambda: when


def quota(ddb, owner: str = ALICE) -> int:
    item = ddb.get_item(TableName=TABLE, Key={"pk": {"S": f"OWNER#{owner}"}, "sk": {"S": "QUOTA"}})["Item"]
    return int(item["live"]["N"])


def spot_annex(api, launch, **body: Any) -> tuple[dict[str, Any], list[str]]:
    annex = request(api, name=body.pop("name", "spot-run"), market="spot", replace=True, **body)
    launch.deliver()
    ids = sorted(i["instance_id"] for i in detail(api, annex["id"])["instances"])
    return annex, ids


def interrupt(ec2, handler: InterruptionHandler, instance_id: str, *, now: datetime) -> None:
    """EC2's two-minute warning, then the reclaim: the instance terminates and its state change arrives."""
    assert handler.handle(event_for("spot-interruption-warning", instance_id), now=now) is Outcome.RECORDED
    ec2.terminate_instances(InstanceIds=[instance_id])
    reclaimed = handler.handle(
        event_for("spot-state-terminated", instance_id), now=now + timedelta(minutes=2)
    )
    assert reclaimed is Outcome.RECLAIMED


def record(api, annex_id: str, instance_id: str) -> dict[str, Any]:
    (found,) = [i for i in detail(api, annex_id)["instances"] if i["instance_id"] == instance_id]
    return found


def test_an_interrupted_instance_is_replaced_once(api, launch, faults, ec2, ddb, interruptions):
    annex, (victim, other) = spot_annex(api, launch, count=2)
    quota_before = quota(ddb)
    now = utcnow() + timedelta(minutes=30)

    interrupt(ec2, interruptions, victim, now=now)
    records = launch.pending()
    assert len(records) == 1  # the reclaim's record change, and nothing else, reaches the launch function
    launch.invoke(records, clock=at(now + timedelta(minutes=2)))

    live = instances_of(ec2, annex["id"])
    (new,) = [i for i in live if i["InstanceId"] != other]
    assert tags_of(new)["annex:replaces"] == victim
    assert tags_of(new)["annex:stack"] == STACK
    assert new["InstanceLifecycle"] == "spot"
    after = detail(api, annex["id"])
    assert after["state"] == "running"
    assert record(api, annex["id"], victim)["replaced_by"] == new["InstanceId"]
    assert record(api, annex["id"], new["InstanceId"])["replaces"] == victim
    assert history(after, "instance-replaced") == [
        f"{new['InstanceId']} replaced {victim} (spot interruption)"
    ]
    assert quota(ddb) == quota_before  # the unit the reclaim gave back went to the replacement
    status, listed = api.call("GET", "/annexes")
    assert status == 200
    (row,) = listed["annexes"]
    assert (row["interrupted_count"], row["replaced_count"]) == (1, 1)
    (fleet,) = faults.launches("CreateFleet")[1:]
    assert fleet["SpotOptions"]["AllocationStrategy"] == "capacity-optimized"
    assert fleet["TargetCapacitySpecification"]["TotalTargetCapacity"] == 1
    assert len(fleet["LaunchTemplateConfigs"][0]["Overrides"]) == len(
        launch.module.settings().subnet_ids
    ) * len(after["instance_types"])

    # The stream delivers the record again, and EC2 repeats its events: nothing new.
    launch.invoke(records, clock=at(now + timedelta(minutes=3)))
    gone = event_for("spot-state-terminated", victim)
    assert interruptions.handle(gone, now=now + timedelta(minutes=4)) is Outcome.DUPLICATE
    launch.deliver(clock=at(now + timedelta(minutes=4)))
    assert len(faults.launches("CreateFleet")) == 2
    assert len(instances_of(ec2, annex["id"])) == 2
    assert len(history(detail(api, annex["id"]), "instance-replaced")) == 1
    assert quota(ddb) == quota_before
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []


def test_no_replacement_within_the_drain_lead_of_the_lease_end(api, launch, faults, ec2, ddb, interruptions):
    annex, (victim, _) = spot_annex(api, launch, count=2, lease="1h")
    lease_end = parse_time(annex["lease_expires_at"])
    now = lease_end - timedelta(minutes=6)  # reclaimed 2 minutes later: 4 minutes left, drain lead is 5
    quota_before = quota(ddb)

    interrupt(ec2, interruptions, victim, now=now)
    launch.deliver(clock=at(now + timedelta(minutes=2)))

    assert len(faults.launches("CreateFleet")) == 1
    assert len(instances_of(ec2, annex["id"])) == 1
    note = record(api, annex["id"], victim)["replacement_note"]
    assert "drain lead" in note
    assert history(detail(api, annex["id"]), "not-replaced") == [f"{victim}: {note}"]
    assert quota(ddb) == quota_before - 1


def test_no_replacement_when_the_budget_would_be_passed(api, launch, faults, ec2, ddb, interruptions):
    annex, (victim, _) = spot_annex(api, launch, count=2, budget="0.05", name="tight")
    now = utcnow() + timedelta(hours=2)  # two instances for two hours are past five cents at any price

    interrupt(ec2, interruptions, victim, now=now)
    launch.deliver(clock=at(now + timedelta(minutes=2)))

    assert len(faults.launches("CreateFleet")) == 1
    assert "budget" in record(api, annex["id"], victim)["replacement_note"]


def test_no_replacement_past_the_owners_monthly_budget(api, launch, faults, ec2, ddb, interruptions):
    # Given a spot annex of alice's that replaces its instances, and then a monthly budget of what one
    # such instance costs for a whole lease: a replacement alone (for the rest of the lease) would fit, but
    # not beside what her annex has committed (an administrator lowered it after the request was admitted)
    annex, (victim, _) = spot_annex(api, launch, count=2, name="monthly")
    one = {"name": "one", "count": 1, "lease": "4h", "market": "spot", "replace": True}
    status, quote = api.call("POST", "/estimates", body={"request": one})
    assert status == 200, quote
    budget = Decimal(quote["adds_usd"])
    status, _ = api.call(
        "PUT", "/admin/budgets", as_=ADMIN, body={"owner": ALICE, "monthly_usd": str(budget)}
    )
    assert status == 200
    now = utcnow() + timedelta(minutes=20)
    # When EC2 reclaims one of its instances
    interrupt(ec2, interruptions, victim, now=now)
    launch.deliver(clock=at(now + timedelta(minutes=2)))
    # Then no replacement is launched, and the record says it is the monthly budget, with the figures
    assert len(faults.launches("CreateFleet")) == 1
    note = record(api, annex["id"], victim)["replacement_note"]
    assert "a replacement instance would add up to $" in note
    assert f"${budget} budget for" in note
    assert not record(api, annex["id"], victim).get("replaced_by")


def test_a_roomy_budget_does_not_stop_the_replacement(api, launch, faults, ec2, ddb, interruptions):
    annex, (victim, _) = spot_annex(api, launch, count=2, budget="500", name="roomy")
    api.call("PUT", "/admin/budgets", as_=ADMIN, body={"owner": ALICE, "monthly_usd": "500"})
    interrupt(ec2, interruptions, victim, now=utcnow() + timedelta(minutes=20))
    launch.deliver(clock=at(utcnow() + timedelta(minutes=22)))
    assert record(api, annex["id"], victim)["replaced_by"]


def test_never_beyond_the_annex_count(api, launch, faults, ec2, ddb, interruptions):
    annex, (victim, _) = spot_annex(api, launch, count=2)
    now = utcnow() + timedelta(minutes=30)
    interrupt(ec2, interruptions, victim, now=now)
    quota_before = quota(ddb)
    # Something else took the room first (the annex holds its count again): the claim must refuse.
    ddb.update_item(
        TableName=TABLE,
        Key={"pk": {"S": f"ANNEX#{annex['id']}"}, "sk": {"S": "META"}},
        UpdateExpression="SET held = :two",
        ExpressionAttributeValues={":two": {"N": "2"}},
    )

    launch.deliver(clock=at(now + timedelta(minutes=2)))

    assert len(faults.launches("CreateFleet")) == 1
    assert "count" in record(api, annex["id"], victim)["replacement_note"]
    assert quota(ddb) == quota_before


def test_an_annex_without_replace_is_not_replaced(api, launch, faults, ec2, ddb, interruptions):
    annex = request(api, name="plain-spot", count=1, market="spot")
    launch.deliver()
    (victim,) = [i["instance_id"] for i in detail(api, annex["id"])["instances"]]
    interrupt(ec2, interruptions, victim, now=utcnow() + timedelta(minutes=5))
    launch.deliver(clock=at(utcnow() + timedelta(minutes=7)))
    assert len(faults.launches("CreateFleet")) == 1
    ended = record(api, annex["id"], victim)
    assert ended["replaced_by"] is None
    assert ended["replacement_note"] is None


def test_replace_is_refused_for_on_demand(api):
    status, body = api.call(
        "POST", "/annexes", body={"name": "od", "count": 1, "replace": True, "lease": "1h"}
    )
    assert status == 422
    assert [f["field"] for f in body["fields"]] == ["replace"]
    status, listed = api.call("GET", "/annexes")
    assert status == 200
    assert listed["annexes"] == []


@pytest.mark.parametrize("crash", ["before EC2 launched", "after EC2 launched"])
def test_a_crash_between_claim_and_launch_is_finished_by_the_retry(
    api, launch, faults, ec2, ddb, interruptions, crash
):
    annex, (victim, other) = spot_annex(api, launch, count=2)
    quota_before = quota(ddb)
    now = utcnow() + timedelta(minutes=30)
    interrupt(ec2, interruptions, victim, now=now)
    records = launch.pending()

    def die() -> None:
        raise RuntimeError("the launch function crashed after claiming the replacement")

    if crash == "before EC2 launched":
        faults.before_launch.append(die)
    else:
        faults.crash_after = {2}
    with pytest.raises(BatchProcessingError):
        launch.invoke(records, clock=at(now + timedelta(minutes=2)))
    assert record(api, annex["id"], victim)["replacement_claimed_at"] is not None

    launch.invoke(records, clock=at(now + timedelta(minutes=3)))  # the stream retries the record

    live = [i["InstanceId"] for i in instances_of(ec2, annex["id"])]
    assert len(live) == 2
    assert other in live
    (new,) = [i for i in live if i != other]
    assert record(api, annex["id"], victim)["replaced_by"] == new
    assert len(history(detail(api, annex["id"]), "instance-replaced")) == 1
    assert quota(ddb) == quota_before
    expected_calls = 2 if crash == "after EC2 launched" else 3  # the crashed call never reached EC2
    assert len(faults.launches("CreateFleet")) == expected_calls


def test_no_capacity_gives_the_unit_back_and_says_so(api, launch, faults, ec2, ddb, interruptions):
    annex, (victim, _) = spot_annex(api, launch, count=2)
    now = utcnow() + timedelta(minutes=30)
    interrupt(ec2, interruptions, victim, now=now)
    quota_after_reclaim = quota(ddb)
    faults.scripted = ["InsufficientInstanceCapacity"]

    launch.deliver(clock=at(now + timedelta(minutes=2)))

    assert len(instances_of(ec2, annex["id"])) == 1
    assert "InsufficientInstanceCapacity" in record(api, annex["id"], victim)["replacement_note"]
    assert quota(ddb) == quota_after_reclaim
    held = ddb.get_item(TableName=TABLE, Key={"pk": {"S": f"ANNEX#{annex['id']}"}, "sk": {"S": "META"}})
    assert held["Item"]["held"]["N"] == "1"


def test_two_racing_deliveries_claim_one_unit(api, launch, faults, ec2, ddb, interruptions):
    # Both read the record unclaimed, then both claim: the record's condition lets one through.
    annex, (victim, _) = spot_annex(api, launch, count=2)
    now = utcnow() + timedelta(minutes=30)
    interrupt(ec2, interruptions, victim, now=now)
    store, before = AnnexStore(ddb, TABLE), quota(ddb)
    key = InstanceKey(annex["id"], victim)
    claims = [
        store.claim_replacement(
            key,
            owner=ALICE,
            count=2,
            lease_after=now,
            now=now,
            max_live_per_owner=12,
            max_live_in_stack=1000,
        )
        for _ in range(2)
    ]
    assert claims == [ReplacementClaim.CLAIMED, ReplacementClaim.SETTLED]
    assert quota(ddb) == before + 1


def test_a_lost_reclaim_event_is_made_good_by_idle_reap(api, launch, faults, ec2, ddb, interruptions):
    # The warning arrives; EC2 reclaims the instance but its state change never reaches the queue.
    annex, (victim, other) = spot_annex(api, launch, count=2)
    now = utcnow() + timedelta(minutes=30)
    store = AnnexStore(ddb, TABLE)
    heartbeats = HeartbeatService(store, HeartbeatSettings.from_env(function_env("HeartbeatFunction")))
    beat = HeartbeatRequest(instance_id=other, annex_id=annex["id"], claimed_slots=4, total_slots=4)
    heartbeats.report(instance_arn(other), beat, now=now + timedelta(minutes=1))  # the other one lives
    warning = event_for("spot-interruption-warning", victim)
    assert interruptions.handle(warning, now=now) is Outcome.RECORDED
    ec2.terminate_instances(InstanceIds=[victim])
    timing = IdleReapSettings.from_env(function_env("IdleReapFunction"))

    run_idle_reap(
        store,
        Ec2Inventory(ec2, STACK, instance_profile_arn=INSTANCE_PROFILE_ARN),
        now=now + timedelta(minutes=2),
        timing=timing,
        retention=timing.retention,
    )
    assert record(api, annex["id"], victim)["end_reason"] == "silent"
    launch.deliver(clock=at(now + timedelta(minutes=3)))

    new = record(api, annex["id"], victim)["replaced_by"]
    assert new is not None
    assert (
        tags_of(next(i for i in instances_of(ec2, annex["id"]) if i["InstanceId"] == new))["annex:replaces"]
        == victim
    )
