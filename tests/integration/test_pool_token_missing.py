"""The launch function checks that the pool token parameter exists before launching: while it does not
(the stack names it, never creates it), an annex fails naming the parameter and how to store it, launches
nothing, returns its quota, and `LaunchConfigErrors` (LaunchConfigErrorsAlarm's metric) is emitted. Once
the administrator puts it, launches go ahead. The check reads metadata only, never the value."""

from __future__ import annotations

import json
from collections import Counter

import boto3
import pytest
from annex.aws.pool_token import PoolTokenParameter

LIVE = ("pending", "running", "stopping", "stopped")
FRESH = "/annex/fresh-stack/pool-token"


@pytest.fixture
def no_token(launch, monkeypatch):
    """A fresh deployment: the stack names the parameter, nobody has put it yet."""
    ssm = boto3.client("ssm", region_name="us-east-1")
    monkeypatch.setenv("POOL_TOKEN_PARAMETER", FRESH)
    launch.module.settings.cache_clear()
    launch.module.launcher.cache_clear()
    return ssm


def request(api, name: str) -> dict:
    status, annex = api.call("POST", "/annexes", body={"name": name, "count": 3, "lease": "4h"})
    assert status == 201, annex
    return annex


def live_instances(ec2) -> list[str]:
    resp = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": list(LIVE)}])
    return [i["InstanceId"] for r in resp["Reservations"] for i in r["Instances"]]


def test_a_missing_token_fails_the_launch_naming_it_and_launches_nothing(api, launch, no_token, ec2, capsys):
    annex = request(api, "bio-run")

    launch.deliver()

    status, after = api.call("GET", f"/annexes/{annex['id']}")
    assert status == 200
    assert (after["state"], after["end_reason"]) == ("failed", "launch-failed")
    [note] = [e["detail"] for e in after["history"] if e["action"] == "failed"]
    assert f"the pool token parameter {FRESH} does not exist" in note
    assert "aws ssm put-parameter --type SecureString" in note
    assert live_instances(ec2) == []
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert any(m.get("LaunchConfigErrors") == [1.0] for m in metrics)  # its alarm, which names the cause
    # the quota (3 of 12) and the name came back: 10 more under the same name are accepted
    assert api.call("POST", "/annexes", body={"name": "bio-run", "count": 10, "lease": "4h"})[0] == 201


def test_once_the_token_is_put_the_next_launch_goes_ahead(api, launch, no_token, ec2):
    first = request(api, "before")
    launch.deliver()
    assert api.call("GET", f"/annexes/{first['id']}")[1]["state"] == "failed"

    no_token.put_parameter(Name=FRESH, Value="eyJhbGciOiJIUzI1NiJ9.stored-token.c2ln", Type="SecureString")
    second = request(api, "after")
    launch.deliver()

    assert api.call("GET", f"/annexes/{second['id']}")[1]["state"] == "running"
    assert len(live_instances(ec2)) == 3


def test_the_check_reads_metadata_only_and_a_stored_token_once_per_container(aws):
    ssm = boto3.client("ssm", region_name="us-east-1")
    calls: Counter[str] = Counter()
    ssm.meta.events.register("before-call.ssm", lambda model, **_: calls.update([model.name]))
    # another parameter whose name starts like ours: an exact-name filter, not a prefix
    ssm.put_parameter(Name=FRESH + "-old", Value="x", Type="SecureString")
    token = PoolTokenParameter(ssm, FRESH)

    assert token.missing() is True
    assert token.missing() is True  # a missing token is asked about again: an admin may put it
    ssm.put_parameter(Name=FRESH, Value="a-token", Type="SecureString")
    assert token.missing() is False
    assert token.missing() is False

    assert calls == Counter({"DescribeParameters": 3, "PutParameter": 2})  # never GetParameter(s)


def test_when_ssm_cannot_be_asked_the_launch_is_not_blocked(aws, monkeypatch):
    ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    # the instance powers off reporting a missing token at boot anyway; an SSM outage must not stop launches
    assert PoolTokenParameter(ssm, FRESH).missing() is False
