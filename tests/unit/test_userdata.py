"""User data: the boot script passes shellcheck and carries no secret; the heartbeat agent, run with
fake curl/condor/systemctl commands, reports slots, obeys run/drain/terminate and enforces the lease."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from annex.core.clock import to_epoch
from annex.core.models import HeartbeatAction, HeartbeatRequest, HeartbeatResponse
from annex.launch.userdata import (
    USER_DATA_LIMIT,
    NodeConfig,
    condor_owner,
    heartbeat_agent,
    render_user_data,
    unpack_user_data,
)

SHELLCHECK = Path(sys.executable).with_name("shellcheck")
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:annex-pool-AbCdEf"
HEARTBEAT_URL = "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/v1/heartbeat"
LEASE = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)


def node_config(**changes) -> NodeConfig:
    fields = {
        "annex_id": "ax-0123456789abcdef",
        "annex_name": "bio-run",
        "condor_user": "alice",
        "central_manager": "cm.pool.example.org:9618",
        "pool_token_secret_arn": SECRET_ARN,
        "secrets_endpoint": "https://secretsmanager.us-east-1.amazonaws.com",
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


def test_user_data_names_the_secret_but_never_holds_a_token():
    script = unpack_user_data(render_user_data(node_config()))

    assert f"POOL_TOKEN_SECRET_ARN={SECRET_ARN}" in script
    assert "secretsmanager.GetSecretValue" in script
    # The renderer takes no token at all; the only token-shaped strings are the IMDS session headers.
    assert "SecretString" in script  # read at boot, from the API answer
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


# --- the heartbeat agent, run for real with fake commands ---------------------------------------

FAKE_CURL = """#!{python}
import json, os, sys
args = sys.argv[1:]
url = args[-1]
entry = {{"args": args}}
if "--config" in args:
    with open(args[args.index("--config") + 1]) as fh:
        entry["config"] = fh.read()
with open(os.environ["FAKE_CURL_LOG"], "a") as fh:
    fh.write(json.dumps(entry) + "\\n")
if url.endswith("/api/token"):
    print("imds-session-token")
elif url.endswith("/iam/security-credentials/"):
    print("annex-instance")
elif "/iam/security-credentials/" in url:
    creds = {{"AccessKeyId": "AKIAFAKEKEY", "SecretAccessKey": "FAKE/SECRET+KEY", "Token": "FAKESESSION"}}
    print(json.dumps(creds))
elif os.environ.get("FAKE_HEARTBEAT_DOWN"):
    print("curl: (7) Failed to connect", file=sys.stderr)
    sys.exit(7)
else:
    sys.stdout.write(os.environ["FAKE_ANSWER"])
"""

FAKE_COMMAND = """#!/bin/bash
echo "$(basename "$0") $*" >>"$FAKE_COMMANDS"
case "$(basename "$0") $1" in
  "systemctl is-active") exit "${FAKE_CONDOR_DOWN:-0}" ;;
  "condor_status "*) printf '%b' "${FAKE_SLOT_STATES:-}" ;;
  "condor_config_val "*) echo node1.pool.example.org ;;
esac
exit 0
"""


class Agent:
    """Runs annex-heartbeat as systemd would, with every outside command faked."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.curl_log = tmp_path / "curl.log"
        self.commands = tmp_path / "commands.log"
        self.script = tmp_path / "annex-heartbeat"
        self.script.write_text(heartbeat_agent())
        self.script.chmod(0o755)
        (self.bin / "curl").write_text(FAKE_CURL.format(python=sys.executable))
        (self.bin / "python3").symlink_to(sys.executable)
        for name in ("systemctl", "shutdown", "condor_status", "condor_config_val", "condor_drain", "logger"):
            (self.bin / name).write_text(FAKE_COMMAND)
        for tool in self.bin.iterdir():
            tool.chmod(0o755)
        self.env_file = tmp_path / "annex.env"
        self.env_file.write_text(
            "ANNEX_ID=ax-0123456789abcdef\nINSTANCE_ID=i-0123456789abcdef0\nREGION=us-east-1\n"
            f"HEARTBEAT_URL={HEARTBEAT_URL}\nDEADMAN_MARGIN_SECONDS=600\n"
        )
        self.set_lease(int(time.time()) + 3600)

    def set_lease(self, epoch: int) -> None:
        (self.state / "lease-expires").write_text(f"{epoch}\n")

    def lease(self) -> int:
        return int((self.state / "lease-expires").read_text())

    def run(
        self, answer: HeartbeatResponse | None = None, *args: str, **env: str
    ) -> subprocess.CompletedProcess[str]:
        environ = {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "ANNEX_ENV_FILE": str(self.env_file),
            "ANNEX_STATE_DIR": str(self.state),
            "ANNEX_IMDS": "http://imds.invalid/latest",
            "FAKE_CURL_LOG": str(self.curl_log),
            "FAKE_COMMANDS": str(self.commands),
            "FAKE_ANSWER": answer.model_dump_json() if answer else "",
            **env,
        }
        return subprocess.run(
            ["/bin/bash", str(self.script), *args],
            env=environ,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    def curl_calls(self) -> list[dict]:
        if not self.curl_log.exists():
            return []
        return [json.loads(line) for line in self.curl_log.read_text().splitlines()]

    def heartbeat_call(self) -> dict:
        calls = [c for c in self.curl_calls() if c["args"][-1] == HEARTBEAT_URL]
        assert len(calls) == 1, calls
        return calls[0]

    def ran(self, command: str) -> list[str]:
        if not self.commands.exists():
            return []
        return [line for line in self.commands.read_text().splitlines() if line.startswith(command)]

    def powered_off(self) -> bool:
        return bool(self.ran("systemctl poweroff"))


@pytest.fixture
def agent(tmp_path) -> Agent:
    return Agent(tmp_path)


def answer(action: HeartbeatAction, lease: datetime | None = None) -> HeartbeatResponse:
    return HeartbeatResponse(action=action, lease_expires_at=lease)


def test_agent_reports_slots_signed_with_the_instance_role_without_exposing_it(agent):
    new_lease = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)

    result = agent.run(
        answer(HeartbeatAction.RUN, new_lease), FAKE_SLOT_STATES="Claimed\\nUnclaimed\\nClaimed\\n"
    )

    assert result.returncode == 0, result.stderr
    call = agent.heartbeat_call()
    args = call["args"]
    body = json.loads(args[args.index("--data-binary") + 1])
    assert HeartbeatRequest.model_validate(body).model_dump() == {
        "instance_id": "i-0123456789abcdef0",
        "annex_id": "ax-0123456789abcdef",
        "claimed_slots": 2,
        "total_slots": 3,
    }
    assert args[args.index("--aws-sigv4") + 1] == "aws:amz:us-east-1:execute-api"
    assert 'user = "AKIAFAKEKEY:FAKE/SECRET+KEY"' in call["config"]
    assert 'header = "x-amz-security-token: FAKESESSION"' in call["config"]
    every_argument = " ".join(a for c in agent.curl_calls() for a in c["args"])
    assert "FAKE/SECRET+KEY" not in every_argument
    assert "FAKESESSION" not in every_argument
    imds_token_call = agent.curl_calls()[0]["args"]
    assert "PUT" in imds_token_call  # IMDSv2: a session token first
    assert agent.lease() == to_epoch(new_lease)
    assert agent.ran("shutdown -P --no-wall +")  # the OS backstop moved with the lease
    assert not agent.powered_off()


def test_agent_drains_once_when_told_to(agent):
    for _ in range(2):
        result = agent.run(answer(HeartbeatAction.DRAIN))
        assert result.returncode == 0, result.stderr

    assert agent.ran("condor_drain") == ["condor_drain -graceful node1.pool.example.org"]
    assert not agent.powered_off()


def test_agent_cancels_its_drain_when_the_lease_is_extended(agent):
    # Given a node draining because its lease was about to end
    assert agent.run(answer(HeartbeatAction.DRAIN)).returncode == 0
    # When the owner extends and the next answer is "run" again
    for _ in range(2):
        assert agent.run(answer(HeartbeatAction.RUN)).returncode == 0
    # Then it takes jobs again, once
    assert agent.ran("condor_drain") == [
        "condor_drain -graceful node1.pool.example.org",
        "condor_drain -cancel node1.pool.example.org",
    ]
    assert not agent.powered_off()


def test_agent_powers_off_when_told_to_terminate(agent):
    agent.run(answer(HeartbeatAction.TERMINATE))

    assert agent.powered_off()


def test_dead_man_switch_powers_off_after_the_lease_and_margin_without_the_network(agent):
    agent.set_lease(int(time.time()) - 601)

    agent.run(answer(HeartbeatAction.RUN))

    assert agent.powered_off()
    assert agent.curl_calls() == []


def test_within_the_margin_a_lost_control_plane_does_not_stop_the_instance(agent):
    lease = int(time.time()) - 300
    agent.set_lease(lease)

    result = agent.run(FAKE_HEARTBEAT_DOWN="1")

    assert result.returncode != 0
    assert "heartbeat failed" in result.stderr
    assert not agent.powered_off()
    assert agent.lease() == lease


def test_agent_powers_off_when_condor_master_stays_down(agent):
    for run in range(1, 4):
        agent.run(answer(HeartbeatAction.RUN), FAKE_CONDOR_DOWN="3")
        assert agent.powered_off() == (run == 3)


def test_arm_schedules_the_backstop_at_the_lease_plus_margin(agent):
    agent.set_lease(int(time.time()) + 3600)

    agent.run(None, "arm")

    minutes = int(agent.ran("shutdown -P --no-wall +")[0].rsplit("+", 1)[1])
    assert minutes == 70  # one hour of lease plus the ten-minute margin
