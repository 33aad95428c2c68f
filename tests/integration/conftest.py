"""The integration tier: moto in process, the table built from template.yaml."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from annex.aws import clients
from annex.launch.capacity import Ec2Capacity
from annex_local.events import FakeContext, rest_event
from annex_local.gateway import Gateway
from annex_local.pool import Pool, create_pool
from annex_local.sigv4 import Identity
from annex_local.streams import StreamReader, filter_patterns, lambda_event, passes
from annex_local.template import resolve_environment, table_create_kwargs, ttl_attribute
from moto import mock_aws

TABLE = "annex-test"
STACK = "annex-test-stack"
ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:iam::123456789012:user/bob"
ADMIN = "arn:aws:sts::123456789012:assumed-role/PoolAdmin/carol"
# Signing keys the local gateway knows (access key -> secret, ARN, session token for role sessions).
KEYS = {
    "alice": ("AKIAALICE00000000001", "alice-secret-key", None),
    "bob": ("AKIABOB0000000000002", "bob-secret-key", None),
    "admin": ("ASIAADMIN00000000003", "admin-secret-key", "admin-session-token"),
}
ARNS = {"alice": ALICE, "bob": BOB, "admin": ADMIN}
# The stack's instance profile, named as create_pool names it: the inventory sees only instances launched
# with it (the iam-instance-profile.arn filter).
INSTANCE_PROFILE = "annex-instance"
INSTANCE_PROFILE_ARN = f"arn:aws:iam::123456789012:instance-profile/{INSTANCE_PROFILE}"
# Policy used by the integration tier: the template's defaults, with limits small enough to reach.
POLICY = {
    "MAX_INSTANCES_PER_ANNEX": "10",
    "MAX_LIVE_INSTANCES_PER_OWNER": "12",
    "ADMIN_PRINCIPALS": "PoolAdmin",
    "AnnexInstanceProfile.Arn": INSTANCE_PROFILE_ARN,
}


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def ddb(aws):
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(**table_create_kwargs(TABLE))
    if ttl := ttl_attribute():
        client.update_time_to_live(
            TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl}
        )
    return client


@pytest.fixture
def ec2(aws):
    return boto3.client("ec2", region_name="us-east-1")


@pytest.fixture
def request_env(monkeypatch, ddb):
    # No lease-timer queue here (the request function then arms none); test_lease_timer gives it one.
    overrides = {**POLICY, "LeaseTimerQueue": ""}
    env = resolve_environment("RequestFunction", table_name=TABLE, stack_name=STACK, overrides=overrides)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


class Api:
    """Calls the request function's handler as API Gateway would."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def call(
        self, method: str, path: str, *, as_: str | None = ALICE, body: Any = None, query=None
    ) -> tuple[int, Any]:
        event = rest_event(method, path, caller_arn=as_, body=body, query=query)
        resp = self.module.handler(event, FakeContext("request"))
        payload = json.loads(resp["body"]) if resp.get("body") else None
        return resp["statusCode"], payload


@pytest.fixture
def api(request_env) -> Api:
    module = importlib.import_module("functions.request.app")
    module.settings.cache_clear()
    module.service.cache_clear()
    module.page_token_key.cache_clear()
    clients.client.cache_clear()
    yield Api(module)
    module.settings.cache_clear()
    module.service.cache_clear()
    module.page_token_key.cache_clear()
    clients.client.cache_clear()


def table_items(client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": TABLE}
    while True:
        page = client.scan(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return sorted(items, key=lambda i: (i["pk"]["S"], i["sk"]["S"]))
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def instance_profile(name: str = INSTANCE_PROFILE) -> str:
    """The ARN of this instance profile in moto, created if missing (as create_pool creates the stack's)."""
    iam = boto3.client("iam", region_name="us-east-1")
    try:
        return str(iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"])
    except iam.exceptions.NoSuchEntityException:
        return str(iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"])


def run_tagged_instances(
    ec2,
    annex_id: str,
    n: int,
    *,
    stack: str = STACK,
    lease: str = "2030-01-01T00:00:00Z",
    profile: str | None = INSTANCE_PROFILE,
):
    """`n` instances tagged as this stack tags them, launched with the instance profile `profile` (the
    stack's unless told; None: none)."""
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    launched_with = {"IamInstanceProfile": {"Arn": instance_profile(profile)}} if profile else {}
    resp = ec2.run_instances(
        **launched_with,
        ImageId=image,
        MinCount=n,
        MaxCount=n,
        InstanceType="c7i.xlarge",
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": "annex:id", "Value": annex_id},
                    {"Key": "annex:stack", "Value": stack},
                    {"Key": "annex:lease-expires", "Value": lease},
                ],
            }
        ],
    )
    return [i["InstanceId"] for i in resp["Instances"]]


def instance_states(ec2, ids) -> dict[str, str]:
    resp = ec2.describe_instances(InstanceIds=list(ids))
    return {i["InstanceId"]: i["State"]["Name"] for r in resp["Reservations"] for i in r["Instances"]}


@pytest.fixture
def identities() -> dict[str, Identity]:
    return {key: Identity(secret, ARNS[who], token) for who, (key, secret, token) in KEYS.items()}


@pytest.fixture
def gateway(api, identities, monkeypatch) -> Iterator[Gateway]:
    """The local API gateway on 127.0.0.1 (ephemeral port), verifying SigV4, in front of the request
    function with moto in process. ANNEX_ENDPOINT points at it."""
    with Gateway(identities) as gw:
        monkeypatch.setenv("ANNEX_ENDPOINT", gw.url)
        yield gw


@pytest.fixture
def aws_profiles(tmp_path, monkeypatch) -> Path:
    """A shared credentials file with the profiles alice, bob and admin (a role session)."""
    lines = []
    for who, (key, secret, token) in KEYS.items():
        lines += [f"[{who}]", f"aws_access_key_id = {key}", f"aws_secret_access_key = {secret}"]
        if token:
            lines.append(f"aws_session_token = {token}")
    path = tmp_path / "credentials"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
    return path


# --- launch: the annex table's stream feeds the launch function ---------------------------------


@pytest.fixture
def pool(aws) -> Pool:
    """Subnets in three zones, the pool security group, an image, the instance profile, the pool secret."""
    return create_pool()


@pytest.fixture
def launch_env(monkeypatch, ddb, pool) -> dict[str, str]:
    env = resolve_environment(
        "LaunchFunction", table_name=TABLE, stack_name=STACK, overrides=pool.launch_overrides()
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


class Launch:
    """Delivers the annex table's stream to the launch handler as the event source mapping would: only
    the records the template's FilterCriteria let through, in one batch."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.reader = StreamReader(TABLE)
        self.patterns = filter_patterns("LaunchFunction")

    def pending(self) -> list[dict[str, Any]]:
        """Stream records written since the last call that would reach the function."""
        return [r for r in self.reader.poll() if passes(self.patterns, r)]

    def invoke(
        self, records: list[dict[str, Any]], *, clock: Callable[[], datetime] | None = None
    ) -> dict[str, Any]:
        if clock is None:
            return self.module.handler(lambda_event(records), FakeContext("launch"))
        return self.module.handler(lambda_event(records), FakeContext("launch"), clock=clock)

    def sleep_with(self, sleep: Callable[[float], None]) -> None:
        """The launch function's EC2 capacity client waits between retries with `sleep` (injected
        through its constructor, as the handler's cold start injects time.sleep)."""
        self.module.launcher().capacity = Ec2Capacity(clients.ec2_launch(), sleep=sleep)

    def deliver(self, *, clock: Callable[[], datetime] | None = None) -> list[dict[str, Any]]:
        """Invoke the function with what is pending (its clock injected when given); returns the records
        delivered."""
        records = self.pending()
        if records:
            response = self.invoke(records, clock=clock)
            assert response == {"batchItemFailures": []}, response
        return records


@pytest.fixture
def launch(launch_env, request_env) -> Iterator[Launch]:
    module = importlib.import_module("functions.launch.app")
    module.settings.cache_clear()
    module.launcher.cache_clear()
    clients.client.cache_clear()
    clients.ec2_launch.cache_clear()
    yield Launch(module)
    module.settings.cache_clear()
    module.launcher.cache_clear()
    clients.client.cache_clear()
    clients.ec2_launch.cache_clear()
