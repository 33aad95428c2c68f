"""Fixtures shared by every tier."""

from __future__ import annotations

import pytest
from annex_local import moto_ec2

# moto with what EC2 does and moto lacks (the iam-instance-profile.arn filter), in every tier.
moto_ec2.install()


@pytest.fixture(autouse=True)
def no_local_config(monkeypatch, tmp_path):
    """Fake region and keys: a developer's own AWS setup never leaks into a test."""
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "ANNEX_ENDPOINT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("ANNEX_CONFIG_FILE", str(tmp_path / "no-annex-config"))
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "AnnexTest")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "annex")
