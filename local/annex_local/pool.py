"""What an administrator provides before the first launch (subnets in several zones, the pool security
group, an image, the instance role and profile, the pool token secret), created in moto for the tests,
the benchmarks and the local stack."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import boto3
from annex.core.clock import utcnow
from annex.core.models import Annex, AnnexState, Market
from annex.store import AnnexStore

CENTRAL_MANAGER = "cm.pool.example.org:9618"
API_ID = "a1b2c3d4e5"
HEARTBEAT_API_ID = "h1b2c3d4e5"  # the heartbeat API (HeartbeatApi), separate from the user API
POOL_TOKEN_PARAMETER = "/annex/annex-pool/pool-token"  # the administrator puts it (README deploy guide)
POOL_TOKEN = "eyJhbGciOiJIUzI1NiJ9.annex-test-pool-token.c2lnbmF0dXJl"  # a fake IDTOKEN: never in user data


@dataclass(frozen=True)
class Pool:
    subnet_ids: list[str]
    zones: dict[str, str]  # subnet id -> availability zone
    security_group_id: str
    image_id: str
    instance_role_arn: str
    instance_profile_arn: str
    pool_token_parameter: str
    pool_token: str
    central_manager: str = CENTRAL_MANAGER

    def launch_overrides(self) -> dict[str, str]:
        """Template parameters and resources for resolve_environment("LaunchFunction", ...)."""
        return {
            "SubnetIds": ",".join(self.subnet_ids),
            "PoolSecurityGroupId": self.security_group_id,
            "AnnexImageId": self.image_id,
            "CentralManager": self.central_manager,
            "POOL_TOKEN_PARAMETER": self.pool_token_parameter,
            "AnnexInstanceProfile.Arn": self.instance_profile_arn,
            "AnnexApi": API_ID,
            "HeartbeatApi": HEARTBEAT_API_ID,
        }


def create_pool(
    *,
    region: str = "us-east-1",
    zones: tuple[str, ...] = ("us-east-1a", "us-east-1b", "us-east-1c"),
    pool_token: str = POOL_TOKEN,
) -> Pool:
    """One VPC with a subnet per zone, the pool security group, the instance role and profile (as the
    template creates them) and the pool token parameter (as the administrator puts it). Call inside moto."""
    ec2 = boto3.client("ec2", region_name=region)
    iam = boto3.client("iam", region_name=region)
    ssm = boto3.client("ssm", region_name=region)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets: dict[str, str] = {}
    for i, zone in enumerate(zones):
        # /20: room for a thousand instances per zone (moto fails with StopIteration, not
        # InsufficientFreeAddressesInSubnet, when a subnet runs out of addresses).
        cidr = f"10.42.{16 * i}.0/20"
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]
        subnets[subnet["SubnetId"]] = zone
    group = ec2.create_security_group(GroupName="htcondor-pool", Description="HTCondor pool", VpcId=vpc)
    # Any image will do; filtering keeps moto from listing thousands (over a second per call).
    images = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}])
    image = images["Images"][0]["ImageId"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = iam.create_role(RoleName="annex-instance", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    profile = iam.create_instance_profile(InstanceProfileName="annex-instance")["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName="annex-instance", RoleName="annex-instance")
    # As the administrator does after deploying (the stack never creates it).
    ssm.put_parameter(Name=POOL_TOKEN_PARAMETER, Value=pool_token, Type="SecureString", Tier="Standard")
    return Pool(
        subnet_ids=list(subnets),
        zones=subnets,
        security_group_id=group["GroupId"],
        image_id=image,
        instance_role_arn=role["Arn"],
        instance_profile_arn=profile["Arn"],
        pool_token_parameter=POOL_TOKEN_PARAMETER,
        pool_token=pool_token,
    )


def put_requested_annex(
    store: AnnexStore,
    *,
    owner: str,
    name: str,
    count: int,
    types: Sequence[str] = ("c7i.xlarge",),
    market: Market = Market.ON_DEMAND,
) -> Annex:
    """An annex record as the request function writes it, without the request policy (any count, any
    list of types): what the launch function's stream trigger sees."""
    now = utcnow()
    annex = Annex(
        id=store.new_annex_id(),
        name=name,
        owner=owner,
        state=AnnexState.REQUESTED,
        count=count,
        instance_types=list(types),
        market=market,
        lease_expires_at=now + timedelta(hours=4),
        idle_timeout_seconds=1200,
        created_at=now,
        updated_at=now,
    )
    store.create_annex(
        annex,
        fingerprint=name,
        max_live_per_owner=count,
        max_live_in_stack=2**31,  # no request policy here: only the units are counted
        actor=owner,
        retention=timedelta(days=1),
    )
    return annex
