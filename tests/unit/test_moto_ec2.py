"""The moto extension (annex_local.moto_ec2) answers DescribeInstances' `iam-instance-profile.arn` filter as
EC2 documents it: the instance profile associated with the instance, as an ARN; values case-sensitive and
OR-ed, filters AND-ed; `*` and `?` wildcards, `\\` escaping; an instance without a profile matches nothing.
And every instance of a RunInstances call, and a fleet's spot instances, carry their profile as on EC2."""

from __future__ import annotations

import boto3
import pytest
from annex.aws.inventory import literal_filter_value
from annex_local import moto_ec2
from moto import mock_aws

ACCOUNT = "123456789012"


@pytest.fixture
def ec2():
    moto_ec2.install()
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


def image_of(ec2) -> str:
    named = [{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}]  # listing every image takes moto seconds
    return str(ec2.describe_images(Owners=["amazon"], Filters=named)["Images"][0]["ImageId"])


def profile(name: str, path: str = "/") -> str:
    iam = boto3.client("iam", region_name="us-east-1")
    return str(iam.create_instance_profile(InstanceProfileName=name, Path=path)["InstanceProfile"]["Arn"])


def launch(ec2, n: int = 1, arn: str | None = None) -> list[str]:
    image = image_of(ec2)
    extra = {"IamInstanceProfile": {"Arn": arn}} if arn else {}
    resp = ec2.run_instances(ImageId=image, MinCount=n, MaxCount=n, InstanceType="t3.micro", **extra)
    return [i["InstanceId"] for i in resp["Instances"]]


def found(ec2, *values: str, extra=()) -> set[str]:
    filters = [{"Name": "iam-instance-profile.arn", "Values": list(values)}, *extra]
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return {i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]}


def test_the_filter_matches_the_exact_profile_arn_only(ec2):
    stack = profile("annex-instance")
    other = profile("annex-instance-other")
    mine = launch(ec2, 3, stack)  # every instance of the call carries it, not only the first
    theirs = launch(ec2, 1, other)
    bare = launch(ec2, 1)

    assert found(ec2, stack) == set(mine)
    assert found(ec2, other) == set(theirs)
    assert found(ec2, stack, other) == set(mine) | set(theirs)  # values are OR-ed
    assert found(ec2, stack[:-3]) == set()  # no prefix match
    assert found(ec2, stack.upper()) == set()  # case-sensitive
    assert not set(bare) & found(ec2, "*")  # no profile: matches nothing, not even *


def test_wildcards_and_escapes_follow_ec2(ec2):
    stack = profile("annex-instance")
    mine = launch(ec2, 1, stack)

    assert found(ec2, f"arn:aws:iam::{ACCOUNT}:instance-profile/annex-*") == set(mine)
    assert found(ec2, f"arn:aws:iam::{ACCOUNT}:instance-profile/annex-instanc?") == set(mine)
    assert found(ec2, f"arn:aws:iam::{ACCOUNT}:instance-profile/annex-instance?") == set()  # ? is one char
    assert found(ec2, f"arn:aws:iam::{ACCOUNT}:instance-profile/annex-\\*") == set()  # an escaped * is a *
    assert found(ec2, literal_filter_value(stack)) == set(mine)


def test_the_filter_is_and_ed_with_the_others(ec2):
    stack = profile("annex-instance")
    mine = launch(ec2, 2, stack)
    ec2.create_tags(Resources=mine[:1], Tags=[{"Key": "annex:stack", "Value": "s"}])

    tagged = [{"Name": "tag:annex:stack", "Values": ["s"]}]
    assert found(ec2, stack, extra=tagged) == set(mine[:1])


def test_a_fleets_spot_instances_carry_the_launch_templates_profile(ec2):
    stack = profile("annex-instance")
    image = image_of(ec2)
    ec2.create_launch_template(
        LaunchTemplateName="tpl", LaunchTemplateData={"ImageId": image, "IamInstanceProfile": {"Arn": stack}}
    )
    resp = ec2.create_fleet(
        Type="instant",
        LaunchTemplateConfigs=[
            {
                "LaunchTemplateSpecification": {"LaunchTemplateName": "tpl", "Version": "$Latest"},
                "Overrides": [{"InstanceType": "t3.micro"}],
            }
        ],
        TargetCapacitySpecification={
            "TotalTargetCapacity": 2,
            "SpotTargetCapacity": 2,
            "DefaultTargetCapacityType": "spot",
        },
    )
    fleet = {i for group in resp["Instances"] for i in group["InstanceIds"]}

    assert len(fleet) == 2
    assert found(ec2, stack) == fleet


def test_a_literal_filter_value_escapes_every_wildcard():
    assert literal_filter_value("a*b?c\\d") == "a\\*b\\?c\\\\d"
    assert moto_ec2.profile_arn_matches("a*b?c\\d", [literal_filter_value("a*b?c\\d")])
    assert not moto_ec2.profile_arn_matches("aXbYc\\d", [literal_filter_value("a*b?c\\d")])
