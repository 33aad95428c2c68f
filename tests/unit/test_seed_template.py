"""The seed node as template.yaml deploys it: off by default (and then nothing of it exists), on-demand
with a stable address, automatic recovery and a lasting root volume; a security group and a role that
allow exactly what the seed needs; and the stack's CentralManager pointing at it."""

from __future__ import annotations

from typing import Any

import pytest
from annex_local.template import load_template, parameter_defaults, resolve_environment
from annex_local.template import resources as resources_of_type

SEED_PARAMETERS = {
    "SeedNode": "on",
    "SeedVpcId": "vpc-0123456789abcdef0",
    "SeedSubnetId": "subnet-0123456789abcdef0",
    "SeedAdminCidr": "198.51.100.0/24",
    "PoolSecurityGroupId": "sg-0123456789abcdef0",
    "CentralManager": "",
}
LAUNCH_OVERRIDES = {
    "AnnexInstanceProfile.Arn": "arn:aws:iam::123456789012:instance-profile/annex",
    "AnnexApi": "a1b2c3d4e5",
    "HeartbeatApi": "f6g7h8i9j0",
    "SeedInterface.PrimaryPrivateIpAddress": "10.0.1.23",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def resources(template):
    return template["Resources"]


def evaluate(template: dict[str, Any], expr: Any, params: dict[str, str]) -> Any:
    """CloudFormation's condition and rule functions over parameter values (defaults, then `params`)."""
    values = {**parameter_defaults(), **params}
    if isinstance(expr, str):
        return expr
    if "Ref" in expr:
        return values[expr["Ref"]]
    if "Condition" in expr or "Fn::Condition" in expr:  # the loader reads `!Condition X` as Fn::Condition
        name = expr.get("Condition") or expr["Fn::Condition"]
        return evaluate(template, template["Conditions"][name], params)
    if "Fn::Equals" in expr:
        left, right = (evaluate(template, e, params) for e in expr["Fn::Equals"])
        return left == right
    if "Fn::Not" in expr:
        return not evaluate(template, expr["Fn::Not"][0], params)
    if "Fn::And" in expr:
        return all(evaluate(template, e, params) for e in expr["Fn::And"])
    raise AssertionError(f"unexpected {expr!r}")


def created(template, params: dict[str, str]) -> set[str]:
    """The resources a deploy with these parameters creates."""
    return {
        name
        for name, r in template["Resources"].items()
        if "Condition" not in r or evaluate(template, {"Condition": r["Condition"]}, params)
    }


def seed_resources(template) -> set[str]:
    return {name for name in template["Resources"] if name.startswith("Seed")}


def test_seed_is_off_by_default_and_then_nothing_of_it_is_created(template):
    assert parameter_defaults()["SeedNode"] == "off"
    assert seed_resources(template) >= {"SeedInstance", "SeedAddress", "SeedRole", "SeedSecurityGroup"}

    assert created(template, {}) & seed_resources(template) == set()
    no_seed_outputs = {name for name, o in template["Outputs"].items() if name.startswith("Seed")}
    assert no_seed_outputs
    assert all(
        not evaluate(template, {"Condition": template["Outputs"][name]["Condition"]}, {})
        for name in no_seed_outputs
    )


def test_seed_on_creates_the_seed_and_only_adds_to_the_stack(template):
    off = created(template, {})
    on = created(template, SEED_PARAMETERS)

    assert on - off == seed_resources(template) - {"SeedApiPolicy"}
    assert off <= on


def test_the_seed_may_call_the_api_only_when_the_administrator_says_so(template, resources):
    assert parameter_defaults()["SeedApiCaller"] == "off"
    assert "SeedApiPolicy" not in created(template, SEED_PARAMETERS)
    assert "SeedApiPolicy" in created(template, {**SEED_PARAMETERS, "SeedApiCaller": "on"})
    assert "SeedApiPolicy" not in created(template, {"SeedApiCaller": "on"})  # no seed, no grant


def test_the_seed_is_on_demand_never_spot(resources):
    seed = resources["SeedInstance"]["Properties"]
    assert "InstanceMarketOptions" not in seed
    assert "SpotPrice" not in seed
    assert "LaunchTemplate" not in seed  # a launch template could carry market options
    kinds = {resources[name]["Type"] for name in resources if name.startswith("Seed")}
    assert not kinds & {"AWS::EC2::SpotFleet", "AWS::EC2::EC2Fleet", "AWS::EC2::LaunchTemplate"}


def test_the_seed_keeps_one_public_address_from_its_first_boot(resources):
    seed = resources["SeedInstance"]
    (interface,) = seed["Properties"]["NetworkInterfaces"]
    assert interface == {"DeviceIndex": "0", "NetworkInterfaceId": {"Ref": "SeedInterface"}}
    association = resources[seed["DependsOn"]]
    assert association["Type"] == "AWS::EC2::EIPAssociation"
    assert association["Properties"] == {
        "AllocationId": {"Fn::GetAtt": ["SeedAddress", "AllocationId"]},
        "NetworkInterfaceId": {"Ref": "SeedInterface"},
    }
    assert resources["SeedAddress"]["Properties"]["Domain"] == "vpc"


def test_the_seed_recovers_on_host_failure_and_reboots_on_instance_failure(resources):
    alarms = {
        r["Properties"]["MetricName"]: r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"].get("Dimensions") == [{"Name": "InstanceId", "Value": {"Ref": "SeedInstance"}}]
    }
    recover = {"Fn::Sub": "arn:${AWS::Partition}:automate:${AWS::Region}:ec2:recover"}
    reboot = {"Fn::Sub": "arn:${AWS::Partition}:automate:${AWS::Region}:ec2:reboot"}
    system = alarms["StatusCheckFailed_System"]
    assert system["Namespace"] == "AWS/EC2"
    assert system["AlarmActions"] == [recover, {"Ref": "AlarmTopic"}]
    assert (system["ComparisonOperator"], system["Threshold"]) == ("GreaterThanThreshold", 0)
    assert system["Period"] * system["EvaluationPeriods"] <= 300
    assert alarms["StatusCheckFailed_Instance"]["AlarmActions"] == [reboot, {"Ref": "AlarmTopic"}]


def test_the_root_volume_survives_a_restart_and_goes_with_the_stack(resources):
    seed = resources["SeedInstance"]["Properties"]
    assert seed["InstanceInitiatedShutdownBehavior"] == "stop"
    (root,) = seed["BlockDeviceMappings"]
    assert root["DeviceName"] == "/dev/xvda"  # Amazon Linux 2023's root device
    assert root["Ebs"]["VolumeType"] == "gp3"
    assert root["Ebs"]["Encrypted"] is True
    assert root["Ebs"]["DeleteOnTermination"] is True  # `sam delete` leaves no volume behind
    assert "DisableApiTermination" not in seed  # nor would it block `sam delete`


def test_the_seed_requires_imdsv2(resources):
    assert resources["SeedInstance"]["Properties"]["MetadataOptions"]["HttpTokens"] == "required"


def ingress(resources) -> list[tuple[int, int, str, Any]]:
    rules = []
    for entry in resources["SeedSecurityGroup"]["Properties"]["SecurityGroupIngress"]:
        condition, rule = None, entry
        if "Fn::If" in entry:
            condition, rule, otherwise = entry["Fn::If"]
            assert otherwise == {"Ref": "AWS::NoValue"}
        source = rule.get("SourceSecurityGroupId") or rule.get("CidrIp")
        rules.append((rule["FromPort"], rule["ToPort"], condition, source))
    for r in resources.values():
        if r["Type"] == "AWS::EC2::SecurityGroupIngress" and r["Properties"]["GroupId"] == {
            "Ref": "SeedSecurityGroup"
        }:
            rule = r["Properties"]
            rules.append((rule["FromPort"], rule["ToPort"], r.get("Condition"), rule["CidrIp"]))
    return rules


def test_the_security_group_opens_htcondor_to_annex_instances_and_ssh_to_the_administrator(resources):
    assert sorted(ingress(resources), key=str) == sorted(
        [
            (9618, 9618, None, {"Ref": "PoolSecurityGroupId"}),
            (22, 22, None, {"Ref": "SeedAdminCidr"}),
            (9618, 9618, "SeedHasCondorCidr", {"Ref": "SeedCondorCidr"}),
            (9618, 9618, "SeedOn", {"Fn::Sub": "${SeedAddress}/32"}),
        ],
        key=str,
    )
    for rule in resources["SeedSecurityGroup"]["Properties"]["SecurityGroupIngress"]:
        assert "0.0.0.0/0" not in str(rule)
        assert rule.get("IpProtocol", "tcp") == "tcp"


def test_the_instance_runs_in_the_seed_group_on_the_seed_subnet(resources):
    interface = resources["SeedInterface"]["Properties"]
    assert interface["GroupSet"] == [{"Ref": "SeedSecurityGroup"}]
    assert interface["SubnetId"] == {"Ref": "SeedSubnetId"}
    assert resources["SeedSecurityGroup"]["Properties"]["VpcId"] == {"Ref": "SeedVpcId"}


def statements(policy_document) -> list[dict[str, Any]]:
    return policy_document["Statement"]


def test_the_seed_role_may_only_write_the_pool_token(resources):
    role = resources["SeedRole"]["Properties"]
    (trust,) = statements(role["AssumeRolePolicyDocument"])
    assert trust["Principal"] == {"Service": {"Fn::Sub": "ec2.${AWS::URLSuffix}"}}
    assert "ManagedPolicyArns" not in role
    (policy,) = role["Policies"]
    (statement,) = statements(policy["PolicyDocument"])
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "ssm:PutParameter"
    arn = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
    assert statement["Resource"] == {"Fn::Sub": arn + "/annex/${AWS::StackName}/${PoolTokenParameterName}"}
    assert resources["SeedInstanceProfile"]["Properties"]["Roles"] == [{"Ref": "SeedRole"}]
    assert resources["SeedInstance"]["Properties"]["IamInstanceProfile"] == {"Ref": "SeedInstanceProfile"}
    # The seed's role is not the annex instances' role: it cannot report heartbeats for them.
    attached = [
        name
        for name, r in resources.items()
        if r["Type"] == "AWS::IAM::Policy" and {"Ref": "SeedRole"} in r["Properties"]["Roles"]
    ]
    assert attached == ["SeedApiPolicy"]


def test_the_seed_api_grant_reaches_the_annex_routes_but_never_the_heartbeat(resources):
    policy = resources["SeedApiPolicy"]
    assert policy["Condition"] == "SeedCallsApi"
    (statement,) = statements(policy["Properties"]["PolicyDocument"])
    assert statement["Action"] == "execute-api:Invoke"
    prefix = "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${AnnexApi}/v1/"
    routes = [r["Fn::Sub"].removeprefix(prefix) for r in statement["Resource"]]
    assert routes == ["*/annexes", "*/annexes/*", "GET/health"]
    assert not any("heartbeat" in r or r.startswith("*/*") or r == "*" for r in routes)


def test_central_manager_resolves_to_the_seed_when_the_seed_is_on():
    on = resolve_environment(
        "LaunchFunction", table_name="t", stack_name="s", overrides={**LAUNCH_OVERRIDES, **SEED_PARAMETERS}
    )
    off = resolve_environment(
        "LaunchFunction",
        table_name="t",
        stack_name="s",
        overrides={**LAUNCH_OVERRIDES, "CentralManager": "cm.pool.example.org"},
    )

    assert on["CENTRAL_MANAGER"] == LAUNCH_OVERRIDES["SeedInterface.PrimaryPrivateIpAddress"]
    assert off["CENTRAL_MANAGER"] == "cm.pool.example.org"


def test_the_central_manager_output_is_what_the_launch_function_uses(template, resources):
    launch = resources["LaunchFunction"]["Properties"]["Environment"]["Variables"]["CENTRAL_MANAGER"]
    assert template["Outputs"]["CentralManager"]["Value"] == launch


RULE_CASES = [
    ({}, True),
    (SEED_PARAMETERS, True),
    ({**SEED_PARAMETERS, "SeedSubnetId": ""}, False),
    ({**SEED_PARAMETERS, "SeedVpcId": ""}, False),
    ({**SEED_PARAMETERS, "SeedAdminCidr": ""}, False),
    ({**SEED_PARAMETERS, "PoolSecurityGroupId": ""}, False),
    ({**SEED_PARAMETERS, "CentralManager": "cm.pool.example.org"}, False),
]


@pytest.mark.parametrize(("params", "accepted"), RULE_CASES)
def test_a_seed_deploy_without_its_network_is_refused_before_anything_is_created(template, params, accepted):
    (rule,) = [r for name, r in template["Rules"].items() if name.startswith("Seed")]
    applies = evaluate(template, rule["RuleCondition"], params)
    holds = all(evaluate(template, a["Assert"], params) for a in rule["Assertions"])

    assert (not applies or holds) is accepted


def test_the_local_stack_deploys_the_defaults_so_it_has_no_seed():
    # The local stack creates every role and profile `resources` returns; a seed role there would be
    # taken for the annex instance role and every simulated heartbeat refused.
    assert list(resources_of_type("AWS::IAM::Role")) == ["LaunchRole", "AnnexInstanceRole"]
    assert list(resources_of_type("AWS::IAM::InstanceProfile")) == ["AnnexInstanceProfile"]
