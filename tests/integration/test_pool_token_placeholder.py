"""The launch function checks the pool token secret before launching (issue 11, item 6): while it still
holds the stack's placeholder, an annex fails naming the cause, launches nothing, returns its quota, and
the `PoolTokenPlaceholder` metric (an alarm's) is emitted. Once a token is stored, launches go ahead."""

from __future__ import annotations

import json
from collections import Counter

import boto3
import pytest
from annex.aws.secrets import PoolTokenSecret
from annex_local.pool import PLACEHOLDER

LIVE = ("pending", "running", "stopping", "stopped")


@pytest.fixture
def placeholder_secret(launch, monkeypatch):
    """The pool token secret as the stack creates it: one version, the placeholder."""
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    arn = sm.create_secret(Name="annex-pool-token-fresh", SecretString=PLACEHOLDER)["ARN"]
    monkeypatch.setenv("POOL_TOKEN_SECRET_ARN", arn)
    launch.module.settings.cache_clear()
    launch.module.launcher.cache_clear()
    return sm, arn


def request(api, name: str) -> dict:
    status, annex = api.call("POST", "/annexes", body={"name": name, "count": 3, "lease": "4h"})
    assert status == 201, annex
    return annex


def live_instances(ec2) -> list[str]:
    resp = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": list(LIVE)}])
    return [i["InstanceId"] for r in resp["Reservations"] for i in r["Instances"]]


def test_a_placeholder_token_fails_the_launch_naming_it_and_launches_nothing(
    api, launch, placeholder_secret, ec2, capsys
):
    annex = request(api, "bio-run")

    launch.deliver()

    status, after = api.call("GET", f"/annexes/{annex['id']}")
    assert status == 200
    assert (after["state"], after["end_reason"]) == ("failed", "launch-failed")
    [note] = [e["detail"] for e in after["history"] if e["action"] == "failed"]
    assert "the pool token secret still holds the placeholder" in note
    assert "an administrator must store a token" in note
    assert live_instances(ec2) == []
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert any(m.get("PoolTokenPlaceholder") == [1.0] for m in metrics)
    assert not any(m.get("LaunchConfigErrors") for m in metrics)  # one alarm, naming the cause
    # the quota (3 of 12) and the name came back: 10 more under the same name are accepted
    assert api.call("POST", "/annexes", body={"name": "bio-run", "count": 10, "lease": "4h"})[0] == 201


def test_once_a_token_is_stored_the_next_launch_goes_ahead(api, launch, placeholder_secret, ec2, capsys):
    sm, arn = placeholder_secret
    first = request(api, "before")
    launch.deliver()
    assert api.call("GET", f"/annexes/{first['id']}")[1]["state"] == "failed"

    sm.put_secret_value(SecretId=arn, SecretString="eyJhbGciOiJIUzI1NiJ9.stored-token.c2ln")
    second = request(api, "after")
    launch.deliver()

    assert api.call("GET", f"/annexes/{second['id']}")[1]["state"] == "running"
    assert len(live_instances(ec2)) == 3


def test_a_stored_token_is_checked_once_per_container(aws):
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    arn = sm.create_secret(Name="t", SecretString=PLACEHOLDER)["ARN"]
    calls: Counter[str] = Counter()
    sm.meta.events.register("before-call.secretsmanager", lambda model, **_: calls.update([model.name]))
    secret = PoolTokenSecret(sm, arn)

    assert secret.placeholder() is True
    assert secret.placeholder() is True  # a placeholder is asked about again: an admin may fix it
    sm.put_secret_value(SecretId=arn, SecretString="a-token")
    assert secret.placeholder() is False
    assert secret.placeholder() is False

    assert calls == Counter({"DescribeSecret": 3, "PutSecretValue": 1})


def test_when_secrets_manager_cannot_be_asked_the_launch_is_not_blocked(aws):
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:annex-pool-token-AbCdEf"
    # the instance refuses a placeholder at boot anyway; a Secrets Manager outage must not stop launches
    assert PoolTokenSecret(sm, missing).placeholder() is False
