"""Security properties of template.yaml that a reviewer would otherwise check by hand: alarms that can
reach someone, a heartbeat API only annex instances reach, EC2 rights scoped to this stack's instance
profile, launch conditions, reserved sweep concurrency, access logs, the pool token's resource policy."""

from __future__ import annotations

import json

import pytest
from annex_local.template import load_template, resource_policy_denies

ACCT = "123456789012"
INSTANCE_ROLE = f"arn:aws:iam::{ACCT}:role/annex-AnnexInstanceRole"
REFS = {"AnnexInstanceRole.Arn": INSTANCE_ROLE}
INSTANCE = f"arn:aws:sts::{ACCT}:assumed-role/annex-AnnexInstanceRole/i-0123456789abcdef0"
ALICE = f"arn:aws:iam::{ACCT}:user/alice"
PROFILE = {"Fn::GetAtt": ["AnnexInstanceProfile", "Arn"]}


@pytest.fixture(scope="module")
def resources():
    return load_template()["Resources"]


def as_list(value):
    return value if isinstance(value, list) else [value]


def statements_of(resource):
    props = resource["Properties"]
    if "Policies" in props and resource["Type"] == "AWS::Serverless::Function":
        return [s for p in props["Policies"] for s in p["Statement"]]
    if "Policies" in props:
        return [s for p in props["Policies"] for s in p["PolicyDocument"]["Statement"]]
    return props["PolicyDocument"]["Statement"]


def granting(resource, action):
    return [s for s in statements_of(resource) if action in as_list(s["Action"]) and s["Effect"] == "Allow"]


# --- alarms ----------------------------------------------------------------------------------------


def test_the_alarm_topic_is_not_encrypted_with_the_aws_managed_sns_key(resources):
    # CloudWatch cannot use alias/aws/sns (its key policy is AWS's): every alarm action would fail.
    text = json.dumps(load_template())
    assert "alias/aws/sns" not in text
    key = resources["AlarmTopic"]["Properties"].get("KmsMasterKeyId")
    if key is not None:  # a customer-managed key must let CloudWatch use it
        policy = resources[key["Ref"]]["Properties"]["KeyPolicy"]["Statement"]
        assert any("cloudwatch" in json.dumps(s.get("Principal")) for s in policy)


def test_only_this_stacks_alarms_may_publish_to_the_topic(resources):
    policy = next(r for r in resources.values() if r["Type"] == "AWS::SNS::TopicPolicy")["Properties"]
    assert policy["Topics"] == [{"Ref": "AlarmTopic"}]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": {"Fn::Sub": "cloudwatch.${AWS::URLSuffix}"}}
    assert statement["Action"] == "sns:Publish"
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    source = statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    assert source.endswith(":alarm:${AWS::StackName}-*")


def test_every_alarm_notifies_the_topic(resources):
    alarms = {k: r for k, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms
    for name, alarm in alarms.items():
        assert {"Ref": "AlarmTopic"} in alarm["Properties"]["AlarmActions"], name
        assert "AlarmName" not in alarm["Properties"], f"{name}: a custom name escapes the topic policy"


# --- the heartbeat API -----------------------------------------------------------------------------


def api_events(resources, api):
    return [
        (fn, e["Properties"]["Path"])
        for fn, r in resources.items()
        if r["Type"] == "AWS::Serverless::Function"
        for e in (r["Properties"].get("Events") or {}).values()
        if e["Type"] == "Api" and e["Properties"]["RestApiId"] == {"Ref": api}
    ]


def test_the_heartbeat_route_is_alone_on_its_own_api(resources):
    assert api_events(resources, "HeartbeatApi") == [("HeartbeatFunction", "/heartbeat")]
    assert all(fn != "HeartbeatFunction" for fn, _ in api_events(resources, "AnnexApi"))


def test_heartbeats_have_their_own_throttle(resources):
    user = resources["AnnexApi"]["Properties"]["MethodSettings"]
    heartbeat = resources["HeartbeatApi"]["Properties"]["MethodSettings"]
    assert all("heartbeat" not in s["ResourcePath"] for s in user)
    assert heartbeat
    assert all(s["ThrottlingRateLimit"] > 0 for s in heartbeat)


@pytest.mark.parametrize(
    ("api", "caller", "denied"),
    [
        ("HeartbeatApi", INSTANCE, False),
        ("HeartbeatApi", ALICE, True),
        ("HeartbeatApi", f"arn:aws:sts::{ACCT}:assumed-role/Researcher/alice", True),
        ("AnnexApi", INSTANCE, True),
        ("AnnexApi", ALICE, False),
    ],
)
def test_resource_policies_keep_researchers_and_instances_apart(api, caller, denied):
    assert resource_policy_denies(api, caller, REFS) is denied


def test_the_instance_role_may_invoke_only_the_heartbeat_route(resources):
    grants = [
        s
        for r in resources.values()
        if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::Role")
        and (
            r["Properties"].get("Roles") == [{"Ref": "AnnexInstanceRole"}]
            or r is resources["AnnexInstanceRole"]
        )
        for s in statements_of(r)
    ]
    invoke = [s for s in grants if "execute-api:Invoke" in as_list(s["Action"])]
    assert [s["Resource"]["Fn::Sub"].rsplit(":", 1)[1] for s in invoke] == [
        "${HeartbeatApi}/v1/POST/heartbeat"
    ]
    other = {a for s in grants for a in as_list(s["Action"])} - {"execute-api:Invoke"}
    assert other == {"secretsmanager:GetSecretValue"}


def test_instances_get_the_heartbeat_apis_url(resources):
    env = resources["LaunchFunction"]["Properties"]["Environment"]["Variables"]
    assert env["HEARTBEAT_URL"]["Fn::Sub"].startswith("https://${HeartbeatApi}.")


def test_both_apis_write_access_logs(resources):
    for api in ("AnnexApi", "HeartbeatApi"):
        setting = resources[api]["Properties"]["AccessLogSetting"]
        group = resources[setting["DestinationArn"]["Fn::GetAtt"][0]]
        assert group["Type"] == "AWS::Logs::LogGroup"
        assert "RetentionInDays" in group["Properties"]
        assert "$context.identity.userArn" in setting["Format"]


# --- EC2 rights ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "holder", ["RequestFunction", "LeaseCheckFunction", "IdleReapFunction", "LaunchRole"]
)
@pytest.mark.parametrize("action", ["ec2:TerminateInstances", "ec2:CreateTags"])
def test_terminate_and_retag_only_instances_of_this_stacks_profile(resources, holder, action):
    for statement in granting(resources[holder], action):
        condition = statement["Condition"]
        if "ec2:CreateAction" in condition.get("StringEquals", {}):
            continue  # tags at launch: the instance does not exist yet
        assert condition["ArnEquals"]["ec2:InstanceProfile"] == PROFILE, (holder, statement["Sid"])
        assert condition["StringEquals"]["aws:ResourceTag/annex:stack"] == {"Ref": "AWS::StackName"}


def test_launch_starts_only_allowed_types_with_imdsv2(resources):
    instance = [
        s
        for s in granting(resources["LaunchRole"], "ec2:RunInstances")
        if any(":instance/" in json.dumps(r) for r in as_list(s["Resource"]))
    ]
    assert instance
    for s in instance:
        cond = s["Condition"]["StringEquals"]
        assert cond["ec2:InstanceType"] == {"Ref": "AllowedInstanceTypes"}
        assert cond["ec2:MetadataHttpTokens"] == "required"


def test_launch_uses_the_configured_image_and_subnets(resources):
    run = granting(resources["LaunchRole"], "ec2:RunInstances")
    text = json.dumps(run)
    assert "image/${AnnexImageId}" in text
    subnets = next(s for s in run if "HasSubnets" in json.dumps(s["Resource"]))
    _, configured, fallback = subnets["Resource"]["Fn::If"]
    assert "SubnetIds" in json.dumps(configured)
    assert fallback["Fn::Sub"].endswith(":subnet/*")  # only while SubnetIds is empty (launches then fail)


def test_the_sweeps_have_reserved_concurrency(resources):
    for fn in ("LeaseCheckFunction", "IdleReapFunction"):
        assert resources[fn]["Properties"]["ReservedConcurrentExecutions"] >= 2


def test_only_annex_instances_may_read_the_pool_token(resources):
    policy = next(r for r in resources.values() if r["Type"] == "AWS::SecretsManager::ResourcePolicy")
    props = policy["Properties"]
    assert props["SecretId"] == {"Ref": "PoolTokenSecret"}
    assert props["BlockPublicPolicy"] is True
    (deny,) = props["ResourcePolicy"]["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Action"] == "secretsmanager:GetSecretValue"
    assert deny["Condition"] == {
        "ArnNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": ["AnnexInstanceRole", "Arn"]}}
    }


def test_every_skipped_checkov_check_says_why():
    from annex_local.template import REPO_ROOT

    lines = (REPO_ROOT / ".checkov.yaml").read_text().splitlines()
    skips = [line for line in lines if line.strip().startswith("- CKV")]
    assert skips
    for line in skips:
        check, _, reason = line.partition("#")
        assert len(reason.strip()) > 20, f"{check.strip()} is skipped without a reason"
