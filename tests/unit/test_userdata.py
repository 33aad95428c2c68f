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
    condor_owner,
    heartbeat_agent,
    render_user_data,
    unpack_user_data,
)

SHELLCHECK = Path(sys.executable).with_name("shellcheck")
POOL_TOKEN_PARAMETER = "/annex/annex-test/pool-token"
HEARTBEAT_URL = "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/v1/heartbeat"
LEASE = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)


def node_config(**changes) -> NodeConfig:
    fields = {
        "annex_id": "ax-0123456789abcdef",
        "annex_name": "bio-run",
        "condor_user": "alice",
        "central_manager": "cm.pool.example.org:9618",
        "pool_token_parameter": POOL_TOKEN_PARAMETER,
        "ssm_endpoint": "https://ssm.us-east-1.amazonaws.com",
        "heartbeat_url": HEARTBEAT_URL,
        "lease_expires_at": LEASE,
        "idle_timeout": timedelta(minutes=20),
        "deadman_margin": timedelta(minutes=10),
        "config_timeout": timedelta(minutes=10),
        "drain_lead": timedelta(minutes=5),
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
    user_data = render_user_data(node_config())
    for name, text in (("user-data.sh", user_data), ("annex-boot.sh", unpack_user_data(user_data))):
        script = tmp_path / name
        script.write_text(text)

        result = shellcheck(script)

        assert result.returncode == 0, result.stdout


def test_heartbeat_agent_passes_shellcheck(tmp_path):
    agent = tmp_path / "annex-heartbeat"
    agent.write_text(heartbeat_agent())

    result = shellcheck(agent)

    assert result.returncode == 0, result.stdout


def test_user_data_names_the_parameter_but_never_holds_a_token():
    script = unpack_user_data(render_user_data(node_config()))

    assert f"POOL_TOKEN_PARAMETER={POOL_TOKEN_PARAMETER}" in script
    assert "AmazonSSM.GetParameter" in script
    # The renderer takes no token at all; the only token-shaped strings are the IMDS session headers.
    assert '"WithDecryption\\":true' in script  # read at boot, decrypted, from the API answer
    for forbidden in ("eyJ", "BEGIN", "condor_token_create"):
        assert forbidden not in script


def test_user_data_configures_htcondor_for_this_annex():
    user_data = render_user_data(node_config(idle_timeout=timedelta(minutes=25)))
    script = unpack_user_data(user_data)

    # The HTCondor configuration itself is checked with HTCondor's parser in test_htcondor_config.py.
    assert "CONDOR_HOST=cm.pool.example.org" in script.splitlines()
    assert "COLLECTOR_HOST=cm.pool.example.org:9618" in script.splitlines()
    assert "STARTD_NOCLAIM_SHUTDOWN = ${IDLE_TIMEOUT_SECONDS}" in script
    assert "IDLE_TIMEOUT_SECONDS=1500" in script
    assert "DEFAULT_MASTER_SHUTDOWN_SCRIPT = ${SBIN}/annex-poweroff" in script
    assert f"LEASE_EXPIRES_EPOCH={to_epoch(LEASE)}" in script
    assert "OnUnitActiveSec=60" in script  # the heartbeat timer, every minute
    assert heartbeat_agent().strip() in script  # the agent ships inside, verbatim
    assert len(user_data.encode()) <= USER_DATA_LIMIT


def test_values_are_shell_quoted():
    script = unpack_user_data(render_user_data(node_config(share_with=(), annex_name="run.1_a-b")))

    assert "SHARE_WITH=''" in script
    assert "ANNEX_NAME=run.1_a-b" in script
    assert "@@" not in script


@pytest.mark.parametrize(
    ("arn", "user"),
    [
        ("arn:aws:iam::123456789012:user/alice", "alice"),
        ("arn:aws:iam::123456789012:user/division/bob", "bob"),
        ("arn:aws:sts::123456789012:assumed-role/Researchers/carol", "carol"),
        ("arn:aws:sts::123456789012:assumed-role/Researchers/carol@example.org", ""),
        ("arn:aws:iam::123456789012:root", ""),
        ("arn:aws:sts::123456789012:assumed-role/R/$(reboot)", ""),
    ],
)
def test_records_without_condor_user_fall_back_to_the_login_in_the_owner_arn(arn, user):
    assert condor_owner(arn) == user


# The heartbeat agent itself is run for real in tests/unit/test_agent_heartbeat.py.
