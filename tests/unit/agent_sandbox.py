"""A sandbox that runs the real heartbeat agent (annex-heartbeat.sh) as systemd would: the real curl
talks to a stub IMDS and heartbeat endpoint on 127.0.0.1 (tests/fakes/endpoint.py, which verifies the
SigV4 signature), the HTCondor tools are strict fakes of a chosen version (tests/fakes/htcondor.py),
and systemctl, shutdown, systemd-run, logger and sleep are recorders (sleep returns at once)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from annex.launch.userdata import heartbeat_agent

from tests.fakes import htcondor

FAKES = Path(htcondor.__file__).parent
HOSTNAME = "ip-10-0-1-23.ec2.internal"

RECORDER = """#!/bin/bash
printf '%s\\n' "$(basename "$0") $*" >>"$FAKE_COMMANDS"
case "$(basename "$0") $1" in
  "systemctl is-active") exit "${FAKE_CONDOR_DOWN:-0}" ;;
esac
exit 0
"""

# The real curl, its arguments recorded first (to show that no credential is ever one of them).
CURL_WRAPPER = """#!/bin/bash
printf '%s\\x1f' "$@" >>"$FAKE_CURL_LOG"
printf '\\n' >>"$FAKE_CURL_LOG"
exec {curl} "$@"
"""


def static_slots(states: list[str], cpus: int = 1) -> list[dict[str, Any]]:
    """HTCondor 9.0's default layout: one static slot per CPU."""
    return [
        {"Name": f"slot{i}@{HOSTNAME}", "SlotType": "Static", "State": state, "Cpus": cpus}
        for i, state in enumerate(states, 1)
    ]


def partitionable(total_cpus: int, jobs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """The default since 23.0: one partitionable slot, one dynamic slot per job (state, CPUs)."""
    used = sum(cpus for _state, cpus in jobs)
    pslot = {
        "Name": f"slot1@{HOSTNAME}",
        "SlotType": "Partitionable",
        "State": "Unclaimed",
        "Cpus": total_cpus - used,
        "TotalSlotCpus": total_cpus,
    }
    dslots = [
        {"Name": f"slot1_{i}@{HOSTNAME}", "SlotType": "Dynamic", "State": state, "Cpus": cpus}
        for i, (state, cpus) in enumerate(jobs, 1)
    ]
    return [pslot, *dslots]


class Sandbox:
    def __init__(self, tmp_path: Path, version: str = "25.0.1") -> None:
        self.root = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.http = tmp_path / "http"
        self.http.mkdir()
        self.commands = tmp_path / "commands.log"
        self.condor_log = tmp_path / "condor.log"
        self.machine_file = tmp_path / "machine.json"
        self.machine = {"version": version, "hostname": HOSTNAME, "slots": [], "startd_up": True}
        self.save_machine()
        self.script = tmp_path / "annex-heartbeat"
        self.script.write_text(heartbeat_agent())
        self.script.chmod(0o755)
        htcondor.install(self.bin)
        real_curl = shutil.which("curl")
        assert real_curl, "the agent tests run the real curl"
        self.curl_log = tmp_path / "curl.log"
        (self.bin / "curl").write_text(CURL_WRAPPER.format(curl=real_curl))
        (self.bin / "curl").chmod(0o755)
        (self.bin / "python3").symlink_to(sys.executable)
        for name in ("systemctl", "shutdown", "systemd-run", "logger", "sleep"):
            (self.bin / name).write_text(RECORDER)
            (self.bin / name).chmod(0o755)
        self.answers([[200, {"action": "run"}]])
        self.server = subprocess.Popen(
            [sys.executable, str(FAKES / "endpoint.py"), str(self.http)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (self.http / "port").exists():
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise RuntimeError("the stub endpoint did not start")
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{(self.http / 'port').read_text()}"
        self.heartbeat_url = f"{self.base}/heartbeat"
        self.env_file = tmp_path / "annex.env"
        self.write_env()
        self.set_lease(int(time.time()) + 3600)

    def close(self) -> None:
        self.server.terminate()
        self.server.wait(timeout=10)

    def write_env(self, **extra: str) -> None:
        lines = {
            "ANNEX_ID": "ax-0123456789abcdef",
            "INSTANCE_ID": "i-0123456789abcdef0",
            "REGION": "us-east-1",
            "HEARTBEAT_URL": self.heartbeat_url,
            "DEADMAN_MARGIN_SECONDS": "600",
            "DRAIN_LEAD_SECONDS": "300",
            **extra,
        }
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))

    # --- the machine and the endpoint -----------------------------------------------------------

    def save_machine(self) -> None:
        self.machine_file.write_text(json.dumps(self.machine))

    def slots(self, slots: list[dict[str, Any]]) -> None:
        self.machine["slots"] = slots
        self.save_machine()

    def machine_state(self) -> dict[str, Any]:
        return json.loads(self.machine_file.read_text())

    def answers(self, responses: list[list[Any]]) -> None:
        """What POST /heartbeat answers, in turn: [status, body]; the last one repeats."""
        (self.http / "responses.json").write_text(json.dumps(responses))

    def set_lease(self, epoch: int) -> None:
        (self.state / "lease-expires").write_text(f"{epoch}\n")

    def lease(self) -> int:
        return int((self.state / "lease-expires").read_text())

    # --- running the agent ------------------------------------------------------------------------

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        path = os.environ["PATH"]
        environ = {
            "PATH": f"{self.bin}:{path}",
            "ANNEX_ENV_FILE": str(self.env_file),
            "ANNEX_STATE_DIR": str(self.state),
            "ANNEX_IMDS": f"{self.base}/latest",
            "FAKE_COMMANDS": str(self.commands),
            "FAKE_CURL_LOG": str(self.curl_log),
            "FAKE_CONDOR_LOG": str(self.condor_log),
            "FAKE_CONDOR_MACHINE": str(self.machine_file),
            **env,
        }
        return subprocess.run(
            ["/bin/bash", str(self.script), *args],
            env=environ,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    # --- what happened ----------------------------------------------------------------------------

    def requests(self) -> list[dict[str, Any]]:
        log = self.http / "requests.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def heartbeats(self) -> list[dict[str, Any]]:
        """The bodies of the heartbeats the endpoint accepted (signature verified)."""
        return [json.loads(r["body"]) for r in self.requests() if "answered" in r]

    def condor_calls(self) -> list[list[str]]:
        if not self.condor_log.exists():
            return []
        return [json.loads(line) for line in self.condor_log.read_text().splitlines()]

    def ran(self, command: str) -> list[str]:
        if not self.commands.exists():
            return []
        return [line for line in self.commands.read_text().splitlines() if line.startswith(command)]

    def curl_args(self) -> list[list[str]]:
        if not self.curl_log.exists():
            return []
        return [line.split("\x1f")[:-1] for line in self.curl_log.read_text().splitlines()]

    def slept(self) -> list[int]:
        return [int(line.split()[1]) for line in self.ran("sleep ")]

    def powered_off(self) -> bool:
        return bool(self.ran("systemctl poweroff"))
