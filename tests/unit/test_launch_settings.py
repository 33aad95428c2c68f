"""LaunchSettings: read once from the environment; empty launch parameters are named, not guessed."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from annex.core.config import LaunchSettings
from pydantic import ValidationError

ENV = {
    "TABLE_NAME": "annex-test",
    "STACK_NAME": "annex-test-stack",
    "RETENTION_DAYS": "30",
    "BOOT_GRACE": "15m",
    "HEARTBEAT_LOSS_GRACE": "5m",
    "SUBNET_IDS": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
    "SECURITY_GROUP_ID": "sg-0123456789abcdef0",
    "IMAGE_ID": "resolve:ssm:/annex/htcondor-node",
    "CENTRAL_MANAGER": "cm.pool.example.org:9618",
    "POOL_TOKEN_PARAMETER": "/annex/annex-test/pool-token",
    "SSM_ENDPOINT": "https://ssm.us-east-1.amazonaws.com",
    "INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/annex-instance",
    "HEARTBEAT_URL": "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/v1/heartbeat",
    "DEADMAN_MARGIN": "10m",
    "CONFIG_TIMEOUT": "10m",
    "DRAIN_LEAD": "5m",
    "USE_CCB": "true",
    "REGION": "us-east-1",
    "MAX_LIVE_INSTANCES_PER_OWNER": "50",
    "MAX_LIVE_INSTANCES": "500",
    "DEFAULT_MONTHLY_BUDGET": "1000",
}


def test_settings_parse_the_template_values():
    settings = LaunchSettings.from_env(ENV)

    assert settings.subnet_ids == ("subnet-0123456789abcdef0", "subnet-0123456789abcdef1")
    assert settings.deadman_margin == timedelta(minutes=10)
    assert settings.boot_grace == timedelta(minutes=15)
    assert settings.missing() == []


def test_empty_launch_parameters_are_named_by_their_template_names():
    env = {**ENV, "SUBNET_IDS": "", "IMAGE_ID": "", "CENTRAL_MANAGER": ""}

    settings = LaunchSettings.from_env(env)

    assert settings.missing() == ["SubnetIds", "AnnexImageId", "CentralManager"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SUBNET_IDS", "subnet-0123456789abcdef0,vpc-123", "SUBNET_IDS must be subnet ids"),
        ("SUBNET_IDS", "subnet-0123456789abcdef0,subnet-0123456789abcdef0", "twice"),
        ("IMAGE_ID", "resolve:ssm:/elsewhere/ami", "IMAGE_ID"),
        ("CENTRAL_MANAGER", "cm.example.org; rm -rf /", "CENTRAL_MANAGER"),
        ("CONFIG_TIMEOUT", "20m", "CONFIG_TIMEOUT must be shorter than BOOT_GRACE"),
        ("HEARTBEAT_URL", "https://x.example/v1/heartbeat?x=$(id)", "HEARTBEAT_URL"),
    ],
)
def test_a_malformed_value_fails_the_cold_start_naming_it(name, value, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        LaunchSettings.from_env({**ENV, name: value})
