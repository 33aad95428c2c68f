"""User data: the boot script passes shellcheck and carries no secret (the heartbeat agent is run in a
sandbox in test_agent_heartbeat.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from annex.core.clock import to_epoch
from annex.launch.userdata import (
    USER_DATA_LIMIT,
    NodeConfig,
    _without_comments,
    condor_owner,
    heartbeat_agent,
    render_user_data,
)

SHELLCHECK = Path(sys.executable).with_name("shellcheck")
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:annex-pool-AbCdEf"
HEARTBEAT_URL = "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/v1/heartbeat"
LEASE = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)


def node_config(**changes) -> NodeConfig:
    fields = {
        "annex_id": "ax-0123456789abcdef",
        "annex_name": "bio-run",
        "condor_owner": "alice",
        "central_manager": "cm.pool.example.org:9618",
        "pool_token_secret_arn": SECRET_ARN,
        "secrets_endpoint": "https://secretsmanager.us-east-1.amazonaws.com",
        "heartbeat_url": HEARTBEAT_URL,
        "lease_expires_at": LEASE,
        "idle_timeout": timedelta(minutes=20),
        "deadman_margin": timedelta(minutes=10),
        "config_timeout": timedelta(minutes=10),
    }
    return NodeConfig(**{**fields, **changes})


def shellcheck(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHELLCHECK), "--shell=bash", "--severity=style", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


# --- the boot script ----------------------------------------------------------------------------


def test_rendered_user_data_passes_shellcheck(tmp_path):
    script = tmp_path / "user-data.sh"
    script.write_text(render_user_data(node_config()))

    result = shellcheck(script)

    assert result.returncode == 0, result.stdout


def test_heartbeat_agent_passes_shellcheck(tmp_path):
    agent = tmp_path / "annex-heartbeat"
    agent.write_text(heartbeat_agent())

    result = shellcheck(agent)

    assert result.returncode == 0, result.stdout


def test_user_data_names_the_secret_but_never_holds_a_token():
    script = render_user_data(node_config())

    assert f"POOL_TOKEN_SECRET_ARN={SECRET_ARN}" in script
    assert "secretsmanager.GetSecretValue" in script
    # The renderer takes no token at all; the only token-shaped strings are the IMDS session headers.
    assert "SecretString" in script  # read at boot, from the API answer
    for forbidden in ("eyJ", "BEGIN", "condor_token_create"):
        assert forbidden not in script


def test_user_data_configures_htcondor_for_this_annex():
    script = render_user_data(node_config(idle_timeout=timedelta(minutes=25)))

    assert "CONDOR_HOST = ${CENTRAL_MANAGER}" in script
    assert "CENTRAL_MANAGER=cm.pool.example.org:9618" in script
    assert "STARTD_ATTRS = \\$(STARTD_ATTRS) AnnexName AnnexId AnnexOwner EC2InstanceID" in script
    assert "(TARGET.Owner =?= MY.AnnexOwner) || (TARGET.TargetAnnexName =?= MY.AnnexName)" in script
    assert "STARTD_NOCLAIM_SHUTDOWN = ${IDLE_TIMEOUT_SECONDS}" in script
    assert "IDLE_TIMEOUT_SECONDS=1500" in script
    assert "DEFAULT_MASTER_SHUTDOWN_SCRIPT = /usr/local/sbin/annex-poweroff" in script
    assert f"LEASE_EXPIRES_EPOCH={to_epoch(LEASE)}" in script
    assert "OnUnitActiveSec=60" in script  # the heartbeat timer, every minute
    assert _without_comments(heartbeat_agent()).strip() in script  # the agent ships inside, verbatim
    assert len(script.encode()) <= USER_DATA_LIMIT


def test_values_are_shell_quoted():
    script = render_user_data(node_config(condor_owner="", annex_name="run.1_a-b"))

    assert "CONDOR_OWNER=''" in script
    assert "ANNEX_NAME=run.1_a-b" in script
    assert "@@" not in script


@pytest.mark.parametrize(
    ("arn", "user"),
    [
        ("arn:aws:iam::123456789012:user/alice", "alice"),
        ("arn:aws:iam::123456789012:user/division/bob", "bob"),
        ("arn:aws:sts::123456789012:assumed-role/Researchers/carol@example.org", "carol@example.org"),
        ("arn:aws:iam::123456789012:root", ""),
        ("arn:aws:sts::123456789012:assumed-role/R/$(reboot)", ""),
    ],
)
def test_the_annex_runs_jobs_of_the_htcondor_user_named_by_the_owner_arn(arn, user):
    assert condor_owner(arn) == user


# The heartbeat agent itself is run for real in tests/unit/test_agent_heartbeat.py.
