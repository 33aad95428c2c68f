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
        if e["Type"] in ("Api", "HttpApi")
        and e["Properties"].get("RestApiId", e["Properties"].get("ApiId")) == {"Ref": api}
    ]


def test_the_heartbeat_route_is_alone_on_its_own_api(resources):
    assert api_events(resources, "HeartbeatApi") == [("HeartbeatFunction", "/heartbeat")]
    assert all(fn != "HeartbeatFunction" for fn, _ in api_events(resources, "AnnexApi"))


def test_the_heartbeat_api_is_an_iam_authorized_http_api_with_payload_2(resources):
    api = resources["HeartbeatApi"]
    assert api["Type"] == "AWS::Serverless::HttpApi"
    assert api["Properties"]["Auth"] == {"EnableIamAuthorizer": True, "DefaultAuthorizer": "AWS_IAM"}
    (event,) = resources["HeartbeatFunction"]["Properties"]["Events"].values()
    assert event["Type"] == "HttpApi"
    assert event["Properties"]["PayloadFormatVersion"] == "2.0"
    assert "Auth" not in event["Properties"]  # no route opts out of IAM


# 100,000 instances, one heartbeat each per 60 s; AWS's account-level quota per region for every API
# together: 10,000 requests/s steady, 5,000 burst (API Gateway quotas, "Throttle quota per account, per
# Region across HTTP APIs, REST APIs, WebSocket APIs, and WebSocket callback APIs").
TARGET_INSTANCES, PERIOD_S = 100_000, 60
ACCOUNT_RATE, ACCOUNT_BURST = 10_000, 5_000


def test_heartbeats_have_their_own_throttle_with_twice_the_target_rate(resources):
    user = resources["AnnexApi"]["Properties"]["MethodSettings"]
    assert all("heartbeat" not in s["ResourcePath"] for s in user)
    heartbeat = resources["HeartbeatApi"]["Properties"]["DefaultRouteSettings"]
    needed = TARGET_INSTANCES / PERIOD_S
    assert heartbeat["ThrottlingRateLimit"] >= 2 * needed
    user_rate = max(s["ThrottlingRateLimit"] for s in user)
    assert heartbeat["ThrottlingRateLimit"] + user_rate <= ACCOUNT_RATE
    assert heartbeat["ThrottlingBurstLimit"] <= ACCOUNT_BURST


@pytest.mark.parametrize(
    ("api", "caller", "denied"), [("AnnexApi", INSTANCE, True), ("AnnexApi", ALICE, False)]
)
def test_the_user_apis_resource_policy_keeps_instances_out(api, caller, denied):
    assert resource_policy_denies(api, caller, REFS) is denied


def test_the_heartbeat_api_has_no_resource_policy_to_lean_on(resources):
    # HTTP APIs have none: access rests on identity policies (the next tests) and the function's check
    assert "ResourcePolicy" not in resources["HeartbeatApi"]["Properties"]["Auth"]


def every_policy_statement(resources):
    """(resource name, statement) for every IAM statement in the template, whatever carries it."""
    out = []
    for name, r in resources.items():
        props = r.get("Properties", {})
        if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            out += [(name, st) for st in props["PolicyDocument"]["Statement"]]
        elif r["Type"] == "AWS::IAM::Role":
            out += [(name, st) for p in props.get("Policies", []) for st in p["PolicyDocument"]["Statement"]]
        elif r["Type"] == "AWS::Serverless::Function":
            out += [
                (name, st) for p in props.get("Policies", []) if isinstance(p, dict) for st in p["Statement"]
            ]
    return out


def invoke_resources(statement):
    if "execute-api:Invoke" not in as_list(statement["Action"]) and "execute-api:*" not in as_list(
        statement["Action"]
    ):
        return []
    return [r["Fn::Sub"] if isinstance(r, dict) else r for r in as_list(statement["Resource"])]


def test_only_the_instance_roles_policy_may_invoke_the_heartbeat_api(resources):
    grants = {name: res for name, st in every_policy_statement(resources) if (res := invoke_resources(st))}
    on_heartbeat = {name for name, res in grants.items() if any("${HeartbeatApi}" in r for r in res)}
    assert on_heartbeat == {"AnnexInstanceHeartbeatPolicy"}
    assert resources["AnnexInstanceHeartbeatPolicy"]["Properties"]["Roles"] == [{"Ref": "AnnexInstanceRole"}]
    # and no grant anywhere reaches an API it does not name (a wildcard API id would include it)
    for name, res in grants.items():
        for r in res:
            api_part = r.rsplit(":", 1)[1]
            assert api_part.startswith(("${AnnexApi}/", "${HeartbeatApi}/")), (name, r)


def test_no_policy_in_the_docs_reaches_the_heartbeat_api():
    from annex_local.http_api import IdentityPolicies, invoke_arn, researcher_statements

    policies = IdentityPolicies()
    policies.add(ALICE, researcher_statements("us-east-1", "userapi123"))
    assert policies.allows(
        ALICE, "execute-api:Invoke", invoke_arn("us-east-1", "userapi123", "v1", "GET", "/annexes")
    )
    assert not policies.allows(
        ALICE, "execute-api:Invoke", invoke_arn("us-east-1", "hbapi45678", "v1", "POST", "/heartbeat")
    )
    # every other policy document in README.md and docs/: the execute-api resources it names are the
    # user API's (its id written as the ApiUrl's), never a wildcard API id and never the heartbeat route
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    found = 0
    for text in texts:
        for arn in re.findall(r"arn:aws:execute-api:[^\"\s`]+", text.read_text()):
            found += 1
            api_id = arn.split(":", 5)[5].split("/", 1)[0]
            assert api_id not in ("*", ""), (text.name, arn)
            assert "heartbeat" not in arn.lower(), (text.name, arn)
            assert "API_ID" in api_id or "ApiUrl" in arn, (text.name, arn)
    assert found >= 9  # the researchers' policy (8 routes) and the Security model's one-liner


def test_instances_get_the_heartbeat_apis_url(resources):
    env = resources["LaunchFunction"]["Properties"]["Environment"]["Variables"]
    assert (
        env["HEARTBEAT_URL"]["Fn::Sub"]
        == "https://${HeartbeatApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/v1/heartbeat"
    )
    assert resources["HeartbeatApi"]["Properties"]["StageName"] == "v1"


def test_both_apis_write_access_logs(resources):
    settings = {
        "AnnexApi": resources["AnnexApi"]["Properties"]["AccessLogSetting"],
        "HeartbeatApi": resources["HeartbeatApi"]["Properties"]["AccessLogSettings"],
    }
    for setting in settings.values():
        group = resources[setting["DestinationArn"]["Fn::GetAtt"][0]]
        assert group["Type"] == "AWS::Logs::LogGroup"
        assert "RetentionInDays" in group["Properties"]
        assert "$context.identity.userArn" in setting["Format"]


def test_heartbeats_are_not_traced(resources):
    assert resources["HeartbeatFunction"]["Properties"]["Tracing"] == "PassThrough"
    assert "TracingEnabled" not in resources["HeartbeatApi"]["Properties"]


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


def test_every_skipped_checkov_check_says_why():
    from annex_local.template import REPO_ROOT

    lines = (REPO_ROOT / ".checkov.yaml").read_text().splitlines()
    skips = [line for line in lines if line.strip().startswith("- CKV")]
    assert skips
    for line in skips:
        check, _, reason = line.partition("#")
        assert len(reason.strip()) > 20, f"{check.strip()} is skipped without a reason"
