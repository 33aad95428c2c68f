"""The launch function under moto: a requested annex, delivered through the table's stream, becomes
tagged, leased, recorded EC2 capacity exactly once, or fails honestly with nothing left running.

moto ignores EC2 ClientTokens, so every "nothing launched twice" below is proven by our own guard, except
where `ClientTokens` adds EC2's idempotency to moto (to prove that each batch carries its own token).
Capacity errors are injected with botocore `before-call` hooks on the launch client."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from annex.aws import clients
from annex.core.clock import parse_time, to_epoch, utcnow
from annex.core.models import AnnexState
from annex.launch.launcher import Launcher
from annex.launch.plan import ordered_subnets
from annex.launch.userdata import unpack_user_data
from annex.store import AnnexStore
from annex.store._table import due_shard
from annex_local.pool import put_requested_annex
from annex_local.streams import filter_patterns, passes
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from tests.integration.conftest import ALICE, STACK, TABLE, run_tagged_instances, table_items

EVENTS = Path(__file__).resolve().parents[2] / "events"
LIVE = ("pending", "running", "stopping", "stopped")
HTTP_STATUS = {"InsufficientInstanceCapacity": 500, "RequestLimitExceeded": 503, "InternalError": 500}


class Ec2Faults:
    """Hooks on the launch client: records every EC2 request, and answers with errors where the test
    says EC2 would (no capacity left in a subnet for a type, scripted error codes)."""

    class _Http:
        headers: dict[str, str] = {}

        def __init__(self, status: int) -> None:
            self.status_code = status

    def __init__(self) -> None:
        self.client = clients.ec2_launch()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.capacity: dict[tuple[str, str], int] | None = None  # (subnet, type) -> instances left
        self.scripted: list[str] = []  # error codes for the next launch calls, in order
        self.before_launch: list[Any] = []  # callables run before each launch call (once each)
        self.crash_after: set[int] = set()  # launch calls (1-based) after which the function "crashes"
        self.client.meta.events.register("before-parameter-build.ec2", self._record)
        self.client.meta.events.register("before-call.ec2", self._before)
        self.client.meta.events.register("after-call.ec2", self._after)
        self._launch_calls = 0

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.requests.append((model.name, json.loads(json.dumps(params, default=str))))

    def launches(self, operation: str = "RunInstances") -> list[dict[str, Any]]:
        return [params for name, params in self.requests if name == operation]

    def _error(self, code: str) -> tuple[Any, dict[str, Any]]:
        status = HTTP_STATUS.get(code, 400)
        return self._Http(status), {
            "Error": {"Code": code, "Message": f"{code} (injected by the test)"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }

    def _before(self, params: dict[str, Any], model: Any, **_: Any) -> Any:
        if model.name not in ("RunInstances", "CreateFleet"):
            return None
        if self.before_launch:
            self.before_launch.pop(0)()
        if self.scripted:
            return self._error(self.scripted.pop(0))
        body = params["body"]
        if model.name == "RunInstances" and self.capacity is not None:
            key, count = (body["SubnetId"], body["InstanceType"]), int(body["MaxCount"])
            if self.capacity.get(key, 0) < count:
                return self._error("InsufficientInstanceCapacity")
            self.capacity[key] -= count
        return None

    def _after(self, model: Any, http_response: Any, **_: Any) -> None:
        if model.name in ("RunInstances", "CreateFleet") and http_response.status_code < 300:
            self._launch_calls += 1
            if self._launch_calls in self.crash_after:
                raise RuntimeError("the launch function crashed right after EC2 launched")


@pytest.fixture
def faults(launch) -> Ec2Faults:
    return Ec2Faults()


@pytest.fixture
def store(ddb) -> AnnexStore:
    return AnnexStore(ddb, TABLE)


def request(api, **body: Any) -> dict[str, Any]:
    status, annex = api.call("POST", "/annexes", body={"lease": "4h", **body})
    assert status == 201, annex
    return annex


def detail(api, annex_id: str) -> dict[str, Any]:
    status, body = api.call("GET", f"/annexes/{annex_id}")
    assert status == 200, body
    return body


def instances_of(ec2, annex_id: str, states=LIVE) -> list[dict[str, Any]]:
    resp = ec2.describe_instances(
        Filters=[
            {"Name": "tag:annex:id", "Values": [annex_id]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )
    return [i for r in resp["Reservations"] for i in r["Instances"]]


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def history(annex: dict[str, Any], action: str) -> list[str]:
    return [e["detail"] for e in annex["history"] if e["action"] == action]


# --- what every instance gets -------------------------------------------------------------------


def test_on_demand_annex_becomes_tagged_locked_down_recorded_instances(api, launch, faults, ec2, ddb, pool):
    annex = request(api, name="bio-run", count=3, tags={"project": "genomics"})

    launch.deliver()

    after = detail(api, annex["id"])
    assert after["state"] == "running"
    assert after["launched_count"] == 3
    assert after["launch_note"] == "3 of 3 launched"
    instances = instances_of(ec2, annex["id"])
    assert len(instances) == 3
    for instance in instances:
        tags = tags_of(instance)
        assert tags["annex:id"] == annex["id"]
        assert tags["annex:name"] == "bio-run"
        assert tags["annex:owner"] == ALICE
        assert tags["annex:stack"] == STACK
        assert tags["annex:lease-expires"] == annex["lease_expires_at"]
        assert tags["project"] == "genomics"
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        shutdown = ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
        )
        assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [pool.security_group_id]
        assert instance["ImageId"] == pool.image_id
        assert instance["SubnetId"] in pool.subnet_ids
        assert instance["InstanceType"] == "c7i.xlarge"
    # moto attaches the profile to the first instance of each RunInstances call only; so check those
    # and that every call asked for it.
    associations = ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
    assert associations
    assert {a["IamInstanceProfile"]["Arn"] for a in associations} == {pool.instance_profile_arn}
    assert {a["InstanceId"] for a in associations} <= {i["InstanceId"] for i in instances}
    runs = faults.launches()
    assert len(runs) == 1
    assert all(r["IamInstanceProfile"] == {"Arn": pool.instance_profile_arn} for r in runs)
    ids = [i["InstanceId"] for i in instances]
    volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": ids}])["Volumes"]
    assert volumes
    assert all(tags_of(v)["annex:id"] == annex["id"] for v in volumes)


def test_instances_are_recorded_with_their_reap_time(api, launch, ec2, ddb, pool):
    annex = request(api, name="bio-run", count=2)

    launch.deliver()

    records = detail(api, annex["id"])["instances"]
    assert {r["instance_id"] for r in records} == {i["InstanceId"] for i in instances_of(ec2, annex["id"])}
    for record in records:
        assert record["state"] == "pending"
        assert record["market"] == "on-demand"
        assert record["instance_type"] == "c7i.xlarge"
        assert record["zone"] in pool.zones.values()
    items = [i for i in table_items(ddb) if i["sk"]["S"].startswith("INST#")]
    assert len(items) == 2
    for item in items:
        launched_at = parse_time(item["launched_at"]["S"])
        assert item["due_kind"]["S"] == due_shard("reap", item["pk"]["S"], item["sk"]["S"])
        assert int(item["due_at"]["N"]) == to_epoch(launched_at) + 15 * 60  # BootGrace


def test_user_data_joins_the_pool_and_holds_no_secret(api, launch, ec2, ddb, pool, capsys):
    annex = request(api, name="bio-run", count=1)

    launch.deliver()

    (instance,) = instances_of(ec2, annex["id"])
    attribute = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    user_data = unpack_user_data(base64.b64decode(attribute["UserData"]["Value"]).decode())
    assert user_data.startswith("#!/bin/bash")
    assert f"ANNEX_ID={annex['id']}" in user_data
    assert "COLLECTOR_HOST=cm.pool.example.org:9618" in user_data
    assert f"POOL_TOKEN_PARAMETER={pool.pool_token_parameter}" in user_data
    assert f"LEASE_EXPIRES_EPOCH={to_epoch(parse_time(annex['lease_expires_at']))}" in user_data
    assert "https://h1b2c3d4e5.execute-api.us-east-1.amazonaws.com/v1/heartbeat" in user_data
    # The token itself is nowhere: not in user data, not in the records, not in the logs.
    assert pool.pool_token not in user_data
    assert pool.pool_token not in json.dumps(table_items(ddb))
    assert pool.pool_token not in capsys.readouterr().out


def test_spot_annex_uses_a_capacity_optimized_instant_fleet_across_the_allowed_types(
    api, launch, faults, ec2, pool, request_env
):
    seen_templates: list[dict[str, Any]] = []

    def read_template() -> None:
        versions = ec2.describe_launch_template_versions(LaunchTemplateName=f"annex-{annex['id']}")
        seen_templates.append(versions["LaunchTemplateVersions"][0]["LaunchTemplateData"])

    faults.before_launch.append(read_template)
    annex = request(api, name="spot-run", count=4, market="spot")

    launch.deliver()

    (fleet,) = faults.launches("CreateFleet")
    assert fleet["Type"] == "instant"
    assert fleet["SpotOptions"]["AllocationStrategy"] == "capacity-optimized"
    assert fleet["TargetCapacitySpecification"]["SpotTargetCapacity"] == 4
    allowed = request_env["ALLOWED_INSTANCE_TYPES"].split(",")
    overrides = fleet["LaunchTemplateConfigs"][0]["Overrides"]
    assert {(o["InstanceType"], o["SubnetId"]) for o in overrides} == {
        (t, s) for t in allowed for s in pool.subnet_ids
    }
    # moto does not copy a launch template's settings onto fleet instances: check the template EC2 used.
    (data,) = seen_templates
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert data["IamInstanceProfile"] == {"Arn": pool.instance_profile_arn}
    assert data["SecurityGroupIds"] == [pool.security_group_id]
    assert data["ImageId"] == pool.image_id
    assert annex["id"] in unpack_user_data(base64.b64decode(data["UserData"]).decode())
    launch_tags = {s["ResourceType"]: tags_of(s) for s in data["TagSpecifications"]}
    for resource in ("instance", "volume"):
        assert launch_tags[resource]["annex:id"] == annex["id"]
        assert launch_tags[resource]["annex:lease-expires"] == annex["lease_expires_at"]
    instances = instances_of(ec2, annex["id"])
    assert len(instances) == 4
    for instance in instances:
        assert instance["InstanceLifecycle"] == "spot"
        assert tags_of(instance)["annex:lease-expires"] == annex["lease_expires_at"]
        assert tags_of(instance)["annex:stack"] == STACK
    after = detail(api, annex["id"])
    assert after["state"] == "running"
    assert {r["market"] for r in after["instances"]} == {"spot"}
    # The per-annex launch template does not outlive the launch.
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []


# --- exactly once -------------------------------------------------------------------------------


def test_duplicate_stream_delivery_launches_nothing_new(api, launch, faults, ec2):
    annex = request(api, name="bio-run", count=3)
    records = launch.pending()
    assert len(records) == 1

    launch.invoke(records)
    launch.invoke(records)  # the event source mapping delivers the batch again
    launch.invoke(records + records)  # and the same record twice in one batch

    assert len(instances_of(ec2, annex["id"])) == 3
    assert len(faults.launches()) == 1
    after = detail(api, annex["id"])
    assert after["launched_count"] == 3
    assert len(history(after, "running")) == 1


@pytest.mark.parametrize(("crash_after_call", "remainder_calls"), [(1, 2), (2, 1)])
def test_redelivery_after_a_crash_mid_launch_launches_only_the_remainder(
    api, launch, faults, ec2, monkeypatch, crash_after_call, remainder_calls
):
    monkeypatch.setenv("MAX_INSTANCES_PER_ANNEX", "250")
    monkeypatch.setenv("MAX_LIVE_INSTANCES_PER_OWNER", "250")
    annex = request(api, name="big-run", count=250)
    records = launch.pending()
    faults.crash_after = {crash_after_call}

    with pytest.raises(BatchProcessingError):
        launch.invoke(records)  # EC2 launched, then the function died before recording that batch

    assert detail(api, annex["id"])["state"] == "launching"
    launched_before = len(instances_of(ec2, annex["id"]))
    assert launched_before == 100 * crash_after_call
    calls_before = len(faults.launches())

    assert launch.invoke(records) == {"batchItemFailures": []}  # Lambda retries the record

    assert len(instances_of(ec2, annex["id"])) == 250
    assert len(faults.launches()) - calls_before == remainder_calls
    after = detail(api, annex["id"])
    assert after["state"] == "running"
    assert after["launched_count"] == 250
    assert len(after["instances"]) == 250  # the crashed run's instances were recorded too


def test_more_tagged_instances_than_asked_for_are_trimmed(api, launch, ec2, store):
    annex = request(api, name="bio-run", count=2)
    records = launch.pending()
    store.set_state(
        annex["id"],
        expected=[AnnexState.REQUESTED],
        new_state=AnnexState.LAUNCHING,
        now=parse_time(annex["created_at"]),
        actor="test",
    )
    run_tagged_instances(ec2, annex["id"], 3)  # a run we cannot account for launched one too many

    launch.invoke(records)

    assert len(instances_of(ec2, annex["id"])) == 2
    after = detail(api, annex["id"])
    assert after["state"] == "running"
    assert after["launched_count"] == 2


# --- capacity -----------------------------------------------------------------------------------


def test_capacity_errors_fall_through_to_the_next_subnet(api, launch, faults, ec2, pool):
    annex = request(api, name="bio-run", count=5)
    *full, free = ordered_subnets(annex["id"], pool.subnet_ids)  # the order this annex tries them in
    faults.capacity = {**{(s, "c7i.xlarge"): 0 for s in full}, (free, "c7i.xlarge"): 100}

    launch.deliver()

    instances = instances_of(ec2, annex["id"])
    assert len(instances) == 5
    assert {i["SubnetId"] for i in instances} == {free}
    after = detail(api, annex["id"])
    assert after["state"] == "running"
    full_zones = ", ".join(pool.zones[s] for s in full)
    assert (
        after["launch_note"]
        == f"5 of 5 launched after InsufficientInstanceCapacity for c7i.xlarge in {full_zones}"
    )
    assert [r["SubnetId"] for r in faults.launches()] == [*full, free]  # one refusal each, then the launch


def test_an_unsupported_type_falls_through_to_the_next_type(launch, faults, ec2, store, pool):
    # The API gives on-demand annexes one type; the launcher takes any list, in order of preference.
    annex = put_requested_annex(
        store, owner=ALICE, name="typed-run", count=4, types=["c7i.xlarge", "m7i.xlarge"]
    )
    faults.capacity = {(s, t): 100 for s in pool.subnet_ids for t in ("c7i.xlarge", "m7i.xlarge")}

    def unsupported(params, model, **_):
        if model.name == "RunInstances" and params["body"]["InstanceType"] == "c7i.xlarge":
            return faults._error("Unsupported")
        return None

    faults.client.meta.events.register_first("before-call.ec2.RunInstances", unsupported)

    launch.deliver()

    instances = instances_of(ec2, annex.id)
    assert len(instances) == 4
    assert {i["InstanceType"] for i in instances} == {"m7i.xlarge"}
    assert store.get_annex(annex.id).state is AnnexState.RUNNING
    c7i_calls = [r for r in faults.launches() if r["InstanceType"] == "c7i.xlarge"]
    assert len(c7i_calls) == len(pool.subnet_ids)  # each subnet was asked once, never again


def test_partial_capacity_is_recorded_honestly_and_the_rest_of_the_quota_returns(
    api, launch, faults, ec2, store, pool
):
    a, b, c = pool.subnet_ids
    faults.capacity = {(a, "c7i.xlarge"): 5, (b, "c7i.xlarge"): 2, (c, "c7i.xlarge"): 0}
    annex = request(api, name="bio-run", count=10)

    launch.deliver()

    assert len(instances_of(ec2, annex["id"])) == 7
    after = detail(api, annex["id"])
    assert after["state"] == "running"
    assert after["launched_count"] == 7
    note = after["launch_note"]
    assert note.startswith("7 of 10 launched: InsufficientInstanceCapacity for c7i.xlarge in ")
    assert all(zone in note for zone in pool.zones.values())
    assert len(after["instances"]) == 7
    assert store.live_instances(ALICE) == 7
    # The 3 that never launched are free again: the owner's limit is 12.
    status, body = api.call("POST", "/annexes", body={"name": "second", "count": 5})
    assert status == 201, body


def test_no_capacity_anywhere_fails_the_annex_with_nothing_left_running(api, launch, faults, ec2, store):
    faults.capacity = {}
    annex = request(api, name="bio-run", count=3)

    launch.deliver()

    after = detail(api, annex["id"])
    assert after["state"] == "failed"
    assert after["end_reason"] == "launch-failed"
    (reason,) = history(after, "failed")
    assert reason.startswith("0 of 3 launched: InsufficientInstanceCapacity for c7i.xlarge in ")
    all_instances = ec2.describe_instances()["Reservations"]
    assert [i for r in all_instances for i in r["Instances"] if i["State"]["Name"] in LIVE] == []
    assert store.live_instances(ALICE) == 0
    status, body = api.call("POST", "/annexes", body={"name": "bio-run", "count": 10})  # name and quota free
    assert status == 201, body


def test_a_configuration_error_fails_the_annex_naming_it_and_raises_the_alarm_metric(
    api, launch, faults, ec2, pool, capsys
):
    faults.scripted = ["InvalidGroup.NotFound"] * 10
    annex = request(api, name="bio-run", count=3)

    launch.deliver()

    after = detail(api, annex["id"])
    assert after["state"] == "failed"
    (reason,) = history(after, "failed")
    assert "InvalidGroup.NotFound (InvalidGroup.NotFound (injected by the test))" in reason
    assert len(faults.launches()) == len(pool.subnet_ids)  # every subnet once; no halving retries
    assert instances_of(ec2, annex["id"]) == []
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert any(m.get("LaunchConfigErrors") for m in metrics)


def test_unset_launch_parameters_fail_the_annex_naming_them(api, launch, faults, ec2, monkeypatch):
    monkeypatch.setenv("SUBNET_IDS", "")
    monkeypatch.setenv("CENTRAL_MANAGER", "")
    annex = request(api, name="bio-run", count=3)

    launch.deliver()

    after = detail(api, annex["id"])
    assert after["state"] == "failed"
    (reason,) = history(after, "failed")
    assert "SubnetIds, CentralManager" in reason
    assert faults.launches() == []


def test_throttling_is_retried_with_backoff(api, launch, faults, ec2, monkeypatch):
    sleeps: list[float] = []
    launch.sleep_with(sleeps.append)
    faults.scripted = ["RequestLimitExceeded", "RequestLimitExceeded"]
    annex = request(api, name="bio-run", count=3)

    launch.deliver()

    assert len(instances_of(ec2, annex["id"])) == 3
    assert len(faults.launches()) == 3  # two throttled attempts, then the launch, same client token
    assert len({r["ClientToken"] for r in faults.launches()}) == 1
    assert len(sleeps) == 2
    assert all(0 <= s <= 20 for s in sleeps)


def test_persistent_throttling_fails_only_that_record_and_a_retry_completes_it(
    api, launch, faults, ec2, monkeypatch
):
    launch.sleep_with(lambda _s: None)
    first = request(api, name="first", count=2)
    second = request(api, name="second", count=2)
    records = launch.pending()
    assert len(records) == 2
    faults.scripted = ["RequestLimitExceeded"] * 6  # every attempt for the first annex

    response = launch.invoke(records)

    assert response == {"batchItemFailures": [{"itemIdentifier": records[0]["dynamodb"]["SequenceNumber"]}]}
    assert detail(api, first["id"])["state"] == "launching"
    assert instances_of(ec2, first["id"]) == []
    assert len(instances_of(ec2, second["id"])) == 2

    launch.invoke(records)  # Lambda retries from the failed record on

    assert detail(api, first["id"])["state"] == "running"
    assert len(instances_of(ec2, first["id"])) == 2
    assert len(instances_of(ec2, second["id"])) == 2


# --- stopped, expired, extended while launching ---------------------------------------------------


def test_an_annex_stopped_while_launching_leaves_nothing_running(api, launch, faults, ec2, ddb):
    annex = request(api, name="bio-run", count=3)
    # The owner stops the annex while RunInstances is on its way: the stop finds no instance yet.
    faults.before_launch.append(lambda: api.call("POST", f"/annexes/{annex['id']}/stop"))

    launch.deliver()

    after = detail(api, annex["id"])
    assert after["state"] == "ended"
    assert after["end_reason"] == "stopped"
    assert len(faults.launches()) == 1
    assert instances_of(ec2, annex["id"]) == []
    assert len(instances_of(ec2, annex["id"], states=("terminated", "shutting-down"))) == 3
    assert {r["state"] for r in after["instances"]} == {"terminated"}


def test_a_run_overtaken_by_a_concurrent_delivery_terminates_nothing(api, launch, faults, ec2, store):
    annex = request(api, name="bio-run", count=2)

    def another_delivery_finished() -> None:
        store.set_state(
            annex["id"],
            expected=[AnnexState.LAUNCHING],
            new_state=AnnexState.RUNNING,
            now=utcnow(),
            actor="launch",
            launched_count=2,
        )

    faults.before_launch.append(another_delivery_finished)

    launch.deliver()

    assert detail(api, annex["id"])["state"] == "running"
    assert len(instances_of(ec2, annex["id"])) == 2  # nothing of a running annex was terminated


def test_an_ended_annex_redelivered_only_cleans_up(api, launch, faults, ec2):
    annex = request(api, name="bio-run", count=2)
    records = launch.pending()
    api.call("POST", f"/annexes/{annex['id']}/stop")
    run_tagged_instances(ec2, annex["id"], 2)  # left by a launch that crashed after the stop's sweep

    launch.invoke(records)

    assert faults.launches() == []
    assert instances_of(ec2, annex["id"]) == []


def test_a_lease_that_ended_before_the_launch_launches_nothing(api, launch, faults, ec2):
    annex = request(api, name="bio-run", count=3, lease="10m", idle_timeout="5m")
    late = parse_time(annex["lease_expires_at"])
    launch.deliver(clock=lambda: late)

    after = detail(api, annex["id"])
    assert after["state"] == "ended"
    assert after["end_reason"] == "lease-expired"
    assert faults.launches() == []


def test_a_lease_extended_during_the_launch_reaches_the_instance_tags(api, launch, faults, ec2):
    annex = request(api, name="bio-run", count=2)
    faults.before_launch.append(lambda: api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "1h"}))

    launch.deliver()

    extended = detail(api, annex["id"])["lease_expires_at"]
    assert extended != annex["lease_expires_at"]
    assert {tags_of(i)["annex:lease-expires"] for i in instances_of(ec2, annex["id"])} == {extended}


# --- the event files ------------------------------------------------------------------------------


def test_the_insert_event_file_is_what_the_filter_passes_and_launches(launch, faults, ec2, ddb, store):
    event = json.loads((EVENTS / "launch-insert.json").read_text())
    (record,) = event["Records"]
    assert passes(filter_patterns("LaunchFunction"), record)
    ddb.put_item(TableName=TABLE, Item=record["dynamodb"]["NewImage"])  # as the request function wrote it
    annex = store.get_annex(record["dynamodb"]["Keys"]["pk"]["S"].removeprefix("ANNEX#"))

    assert launch.invoke(event["Records"]) == {"batchItemFailures": []}

    assert len(instances_of(ec2, annex.id)) == annex.count
    assert store.get_annex(annex.id).state.value == "running"


def test_a_later_change_of_the_annex_never_reaches_the_function(launch, faults):
    event = json.loads((EVENTS / "launch-modify-running.json").read_text())
    (record,) = event["Records"]

    assert not passes(filter_patterns("LaunchFunction"), record)
    assert launch.invoke(event["Records"]) == {"batchItemFailures": []}  # and is skipped if it did
    assert faults.requests == []


# --- EC2's client tokens, and deliveries that race ------------------------------------------------


class ClientTokens:
    """EC2's idempotency, which moto does not have: a RunInstances or CreateFleet repeated with the same
    ClientToken and the same parameters answers with the first call's result and launches nothing; the
    same token with other parameters is refused with IdempotentParameterMismatch."""

    OPERATIONS = ("RunInstances", "CreateFleet")

    def __init__(self, client: Any) -> None:
        self.first: dict[str, tuple[dict[str, Any], Any]] = {}  # token -> (request, response)
        self.repeats = 0
        client.meta.events.register("before-call.ec2", self._before)
        client.meta.events.register("after-call.ec2", self._after)

    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> Any:
        if model.name not in self.OPERATIONS or "ClientToken" not in params["body"]:
            return None
        body = dict(params["body"])
        context["client_token_request"] = body
        if body["ClientToken"] not in self.first:
            return None
        request, response = self.first[body["ClientToken"]]
        if request != body:
            error = {
                "Code": "IdempotentParameterMismatch",
                "Message": "the token was used with other parameters",
            }
            return Ec2Faults._Http(400), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}
        self.repeats += 1
        return Ec2Faults._Http(200), copy.deepcopy(response)

    def _after(self, model: Any, http_response: Any, parsed: Any, context: dict[str, Any], **_: Any) -> None:
        request = context.get("client_token_request")
        if request and http_response.status_code < 300:
            self.first.setdefault(request["ClientToken"], (request, copy.deepcopy(parsed)))


def test_each_batch_launches_its_own_instances_on_an_ec2_that_honours_client_tokens(launch, ec2, store):
    # Given an EC2 that answers a repeated client token with the first call's instances
    tokens = ClientTokens(clients.ec2_launch())
    # When an annex of 201 instances launches (three RunInstances calls: 100, 100, 1)
    annex = put_requested_annex(store, owner=ALICE, name="big-run", count=201)
    launch.deliver()

    # Then it has 201 distinct instances in EC2 and on record, as many as it says it launched
    after = store.get_annex(annex.id)
    assert (after.state, after.launched_count) == (AnnexState.RUNNING, 201)
    assert len(instances_of(ec2, annex.id)) == 201
    assert len({i.instance_id for i in store.list_instances(annex.id)}) == 201
    assert tokens.repeats == 0


def test_a_delivery_that_loses_its_claim_to_a_concurrent_one_launches_nothing(
    launch, faults, ec2, ddb, store, pool
):
    # Given an annex of two, and EC2 room for one instance only
    annex = put_requested_annex(store, owner=ALICE, name="raced", count=2)
    faults.capacity = {(pool.subnet_ids[0], "c7i.xlarge"): 1}
    raced: list[bool] = []

    class ConcurrentDelivery(AnnexStore):
        """Another delivery of the same record claims the annex, launches what fits (one) and moves it
        to running, between this delivery's read and its own claim. Then capacity frees up."""

        def set_state(self, annex_id, **kwargs):
            if kwargs["new_state"] is AnnexState.LAUNCHING and not raced:
                raced.append(True)
                launch.deliver()
                faults.capacity = None
            return super().set_state(annex_id, **kwargs)

    handler_launcher = launch.module.launcher()
    mine = Launcher(
        ConcurrentDelivery(ddb, TABLE),
        handler_launcher.ec2,
        handler_launcher.capacity,
        handler_launcher.settings,
    )

    # When this delivery carries on
    outcome = mine.launch(annex.id, now=utcnow())

    # Then it launches nothing: the annex keeps the one instance the other delivery recorded
    assert raced
    assert outcome.result == "duplicate"
    assert len(instances_of(ec2, annex.id)) == 1
    assert store.get_annex(annex.id).launched_count == 1
