"""The launch function's wiring in template.yaml: what a reviewer of the stack would check by hand."""

from __future__ import annotations

import json

import pytest
from annex_local.streams import filter_patterns, passes
from annex_local.template import load_template

STACK = {"Ref": "AWS::StackName"}
PROFILE = {"ArnEquals": {"ec2:InstanceProfile": {"Fn::GetAtt": ["AnnexInstanceProfile", "Arn"]}}}


@pytest.fixture(scope="module")
def resources():
    return load_template()["Resources"]


@pytest.fixture(scope="module")
def statements(resources):
    policies = resources["LaunchRole"]["Properties"]["Policies"]
    return {s["Sid"]: s for p in policies for s in p["PolicyDocument"]["Statement"]}


def as_list(value):
    return value if isinstance(value, list) else [value]


def test_stream_trigger_is_filtered_bounded_and_dead_lettered(resources):
    function = resources["LaunchFunction"]["Properties"]
    event = function["Events"]["AnnexRequested"]
    props = event["Properties"]

    assert event["Type"] == "DynamoDB"
    assert props["Stream"] == {"Fn::GetAtt": ["AnnexTable", "StreamArn"]}
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= props["MaximumRetryAttempts"] <= 5
    assert props["BisectBatchOnFunctionError"] is True
    # the stack's one dead-letter queue, encrypted and alarmed (FailsafeDeadLetterAlarm)
    assert props["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["FailsafeDLQ", "Arn"]}
    assert resources["FailsafeDLQ"]["Properties"]["SqsManagedSseEnabled"] is True
    dlq_alarm = resources["FailsafeDeadLetterAlarm"]["Properties"]
    assert dlq_alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    assert dlq_alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["FailsafeDLQ", "QueueName"]}
    assert "launch" in dlq_alarm["AlarmDescription"]
    # a launch that fails is retried, then dead-lettered: that alarm, not one on each error, tells someone
    assert "LaunchErrorsAlarm" not in resources
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": "LaunchLogGroup"}
    assert resources["LaunchLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


@pytest.mark.parametrize(
    ("record", "reaches"),
    [
        (
            {
                "eventName": "INSERT",
                "dynamodb": {
                    "Keys": {"pk": {"S": "ANNEX#ax-1"}, "sk": {"S": "META"}},
                    "NewImage": {"state": {"S": "requested"}},
                },
            },
            True,
        ),
        (
            {
                "eventName": "MODIFY",
                "dynamodb": {
                    "Keys": {"pk": {"S": "ANNEX#ax-1"}, "sk": {"S": "META"}},
                    "NewImage": {"state": {"S": "requested"}},
                },
            },
            False,
        ),
        (
            {
                "eventName": "MODIFY",
                "dynamodb": {
                    "Keys": {"pk": {"S": "ANNEX#ax-1"}, "sk": {"S": "META"}},
                    "NewImage": {"state": {"S": "running"}},
                },
            },
            False,
        ),
        (
            {
                "eventName": "INSERT",
                "dynamodb": {
                    "Keys": {"pk": {"S": "OWNER#x"}, "sk": {"S": "QUOTA"}},
                    "NewImage": {"live": {"N": "3"}},
                },
            },
            False,
        ),
        (
            {
                "eventName": "INSERT",
                "dynamodb": {
                    "Keys": {"pk": {"S": "ANNEX#ax-1"}, "sk": {"S": "INST#i-1"}},
                    "NewImage": {"state": {"S": "pending"}},
                },
            },
            False,
        ),
    ],
)
def test_only_new_requested_annex_records_reach_the_function(record, reaches):
    assert passes(filter_patterns("LaunchFunction"), record) is reaches


def _instance_change(old: str, new: str, reason: str | None, notice: str | None = None) -> dict[str, object]:
    image: dict[str, object] = {"state": {"S": new}}
    if reason:
        image["end_reason"] = {"S": reason}
    if notice:
        image["spot_notice"] = {"S": notice}
    return {
        "eventName": "MODIFY",
        "dynamodb": {
            "Keys": {"pk": {"S": "ANNEX#ax-1"}, "sk": {"S": "INST#i-1"}},
            "NewImage": image,
            "OldImage": {"state": {"S": old}},
        },
    }


@pytest.mark.parametrize(
    ("record", "reaches"),
    [
        (_instance_change("running", "terminated", "spot-interrupted"), True),
        (_instance_change("pending", "terminated", "spot-interrupted"), True),
        # Later changes of the ended record (the replacement's claim and outcome) never come back.
        (_instance_change("terminated", "terminated", "spot-interrupted"), False),
        (_instance_change("running", "terminated", "idle"), False),
        # Silent after an interruption warning: the reclaim event was lost, idle-reap ended it.
        (_instance_change("terminating", "terminated", "silent", "interruption"), True),
        (_instance_change("terminating", "terminated", "silent", "rebalance"), False),
        (_instance_change("terminating", "terminated", "silent"), False),
        (_instance_change("running", "running", None), False),
    ],
)
def test_the_end_of_an_interrupted_instance_reaches_the_function_once(record, reaches):
    assert passes(filter_patterns("LaunchFunction"), record) is reaches


def test_role_is_the_functions_own_and_not_sams_generated_one(resources):
    assert resources["LaunchFunction"]["Properties"]["Role"] == {"Fn::GetAtt": ["LaunchRole", "Arn"]}
    assert "Policies" not in resources["LaunchFunction"]["Properties"]


def test_every_statement_names_exact_actions(statements):
    for sid, statement in statements.items():
        # the one Deny only takes away (the pool token's value: tests/unit/test_pool_token_template.py)
        assert statement["Effect"] == "Allow" or sid == "NeverReadThePoolToken"
        for action in as_list(statement["Action"]):
            assert "*" not in action, f"{sid} grants a wildcard action {action}"


def test_instances_start_only_tagged_for_this_stack(statements):
    instances = statements["StartOnlyAllowedTypesWithImdsV2TaggedForThisStack"]
    volumes = statements["StartOnlyVolumesAndFleetsTaggedForThisStack"]
    started = {instances["Sid"], volumes["Sid"]}

    for statement in (instances, volumes):
        assert set(as_list(statement["Action"])) == {"ec2:RunInstances", "ec2:CreateFleet"}
        assert statement["Condition"]["StringEquals"]["aws:RequestTag/annex:stack"] == STACK
    assert ":instance/*" in json.dumps(instances["Resource"])
    assert instances["Condition"]["StringEquals"]["ec2:InstanceType"] == {"Ref": "AllowedInstanceTypes"}
    assert instances["Condition"]["StringEquals"]["ec2:MetadataHttpTokens"] == "required"
    assert any(":volume/*" in json.dumps(r) for r in volumes["Resource"])
    assert ":instance/" not in json.dumps(volumes["Resource"])
    # No other statement lets RunInstances create an instance or volume without that condition.
    for sid, statement in statements.items():
        if sid not in started and "ec2:RunInstances" in as_list(statement["Action"]):
            created = [r for r in as_list(statement["Resource"]) if ":instance/" in json.dumps(r)]
            assert not created, f"{sid} starts instances without the tag condition"
            assert ":volume/" not in json.dumps(statement["Resource"]), sid


def test_tags_are_written_only_at_launch_or_to_move_the_lease(statements):
    taggers = {sid: s for sid, s in statements.items() if "ec2:CreateTags" in as_list(s["Action"])}

    assert set(taggers) == {"TagOnlyAtLaunch", "MoveOnlyTheLeaseTag"}
    at_launch = taggers["TagOnlyAtLaunch"]["Condition"]["StringEquals"]
    assert set(at_launch["ec2:CreateAction"]) == {"RunInstances", "CreateFleet", "CreateLaunchTemplate"}
    assert at_launch["aws:RequestTag/annex:stack"] == STACK
    lease = taggers["MoveOnlyTheLeaseTag"]["Condition"]
    assert lease["ForAllValues:StringEquals"] == {"aws:TagKeys": ["annex:lease-expires"]}
    assert lease["StringEquals"] == {"aws:ResourceTag/annex:stack": STACK}
    assert lease["ArnEquals"] == PROFILE["ArnEquals"]


def test_only_the_annex_instance_role_may_be_passed_and_only_to_ec2(statements):
    passing = [s for s in statements.values() if "iam:PassRole" in as_list(s["Action"])]

    assert len(passing) == 1
    assert passing[0]["Resource"] == {"Fn::GetAtt": ["AnnexInstanceRole", "Arn"]}
    assert "iam:PassedToService" in passing[0]["Condition"]["StringEquals"]


def test_table_access_is_exact(statements):
    records = statements["AnnexRecords"]
    stream = statements["ReadAnnexStream"]

    assert set(records["Action"]) == {
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",  # a replacement's owner-month check: the owner's open annexes
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
    }
    assert records["Resource"] == {"Fn::GetAtt": ["AnnexTable", "Arn"]}
    assert stream["Resource"] == {"Fn::Sub": "${AnnexTable.Arn}/stream/*"}
    assert set(stream["Action"]) == {
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
    }


def test_termination_and_template_deletion_need_the_stack_tag(statements):
    for sid in ("DeleteOnlyAnnexTemplates", "LaunchOnlyFromAnnexTemplates"):
        assert statements[sid]["Condition"] == {"StringEquals": {"aws:ResourceTag/annex:stack": STACK}}, sid
    assert statements["StopOnlyThisStacksInstances"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/annex:stack": STACK},
        **PROFILE,
    }


def test_launch_parameters_deploy_empty_and_the_function_gets_them(resources):
    params = load_template()["Parameters"]
    env = resources["LaunchFunction"]["Properties"]["Environment"]["Variables"]

    for name, var in {
        "SubnetIds": "SUBNET_IDS",
        "PoolSecurityGroupId": "SECURITY_GROUP_ID",
        "AnnexImageId": "IMAGE_ID",
        "CentralManager": "CENTRAL_MANAGER",
    }.items():
        assert params[name]["Default"] == ""
        # CENTRAL_MANAGER is the seed node's address when SeedNode=on (tests/unit/test_seed_template.py).
        value = env[var]["Fn::If"][2] if name == "CentralManager" else env[var]
        assert value == {"Ref": name}
    assert env["HEARTBEAT_URL"] == {
        "Fn::Sub": "https://${HeartbeatApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/v1/heartbeat"
    }
    assert env["POOL_TOKEN_PARAMETER"] == {"Fn::Sub": "/annex/${AWS::StackName}/${PoolTokenParameterName}"}
