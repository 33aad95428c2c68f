"""The fake HTCondor tools the agent tests use are as strict as the real ones (tests/fakes/htcondor.py):
they refuse what the real tools refuse, with the real message and exit code, never answer what they do
not emulate, and answer as the emulated version does (-startd on 24.4+ is the daemon ad, no State)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.fakes import htcondor
from tests.unit.agent_sandbox import HOSTNAME, partitionable, static_slots


@pytest.fixture
def tools(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    htcondor.install(bin_dir)
    machine = tmp_path / "machine.json"

    def run(version: str, *argv: str, slots=None) -> subprocess.CompletedProcess[str]:
        if not machine.exists() or json.loads(machine.read_text())["version"] != version:
            machine.write_text(json.dumps({"version": version, "hostname": HOSTNAME, "slots": slots or []}))
        env = {
            **os.environ,
            "FAKE_CONDOR_MACHINE": str(machine),
            "FAKE_CONDOR_LOG": str(tmp_path / "log"),
        }
        return subprocess.run(
            [str(bin_dir / argv[0]), *argv[1:]], env=env, capture_output=True, text=True, check=False
        )

    return run


VERSIONS = ["9.0.19", "25.0.1"]
SLOTS = partitionable(4, [("Claimed", 1), ("Claimed", 2)])


def test_startd_on_25_answers_with_the_daemon_ad_which_has_no_state(tools):
    result = tools(
        "25.0.1", "condor_status", "-startd", "-direct", HOSTNAME, "-af", "Name", "State", slots=SLOTS
    )

    assert result.returncode == 0
    assert result.stdout == f"{HOSTNAME} undefined\n"


def test_startd_on_9_answers_with_the_slot_ads(tools):
    result = tools("9.0.19", "condor_status", "-startd", "-direct", HOSTNAME, "-af", "State", slots=SLOTS)

    assert result.returncode == 0
    assert result.stdout.split() == ["Unclaimed", "Claimed", "Claimed"]


@pytest.mark.parametrize("version", VERSIONS)
def test_slots_answers_with_partitionable_and_dynamic_slot_ads(tools, version):
    result = tools(
        version, "condor_status", "-slots", "-direct", HOSTNAME, "-af", "SlotType", "Cpus", slots=SLOTS
    )

    assert result.returncode == 0
    assert result.stdout.splitlines() == ["Partitionable 1", "Dynamic 1", "Dynamic 2"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("option", ["-bogus", "--slot", "-s", "-slotsx"])
def test_condor_status_refuses_unknown_options_like_the_real_one(tools, version, option):
    result = tools(version, "condor_status", option, "-direct", HOSTNAME, "-af", "State")

    assert result.returncode == 1
    assert result.stderr.startswith(f"Error:  Unknown option {option}\nUsage: condor_status")


@pytest.mark.parametrize("version", VERSIONS)
def test_condor_status_accepts_the_real_prefixes(tools, version):
    result = tools(
        version,
        "condor_status",
        "-sl",
        "-dir",
        HOSTNAME,
        "-autoformat",
        "State",
        slots=static_slots(["Claimed"]),
    )

    assert result.returncode == 0
    assert result.stdout == "Claimed\n"


def test_options_new_in_25_are_unknown_to_9(tools):
    assert tools("9.0.19", "condor_status", "-gpus", "-direct", HOSTNAME, "-af", "State").returncode == 1
    assert tools("25.0.1", "condor_status", "-gpus", "-direct", HOSTNAME, "-af", "State").returncode == 99


@pytest.mark.parametrize(
    "argv",
    [
        ["condor_status", "-slots", "-direct", HOSTNAME, "-long"],  # real, not emulated
        ["condor_status", "-slots", "-direct", HOSTNAME, "-af", "Cpus*2"],  # expressions
        ["condor_status", "-slots", "-af", "State"],  # the collector
        ["condor_drain", "-fast", HOSTNAME],
        ["condor_config_val", "-startd", "FULL_HOSTNAME"],
    ],
)
def test_what_is_real_but_not_emulated_is_never_answered(tools, argv):
    result = tools("25.0.1", *argv)

    assert result.returncode == 99
    assert result.stdout == ""


def test_af_needs_an_attribute(tools):
    result = tools("25.0.1", "condor_status", "-slots", "-direct", HOSTNAME, "-af")

    assert result.returncode == 1
    assert "requires at last one attribute parameter" in result.stderr


def test_direct_must_name_this_machine(tools):
    result = tools("25.0.1", "condor_status", "-slots", "-direct", "other.example.org", "-af", "State")

    assert result.returncode == 1
    assert "Failed to locate startd other.example.org" in result.stderr


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["-graceful"], 2, "ERROR: must specify one target machine"),
        (["-graceful", HOSTNAME, "extra"], 2, "ERROR: must specify one target machine"),
        (["-nicely", HOSTNAME], 2, "ERROR: unexpected argument: -nicely"),
        (["-cancel", "-reason", "x", HOSTNAME], 2, "ERROR: cannot use -reason with -cancel"),
        (["-graceful", "-reason"], 1, "'-reason' requires another argument"),
    ],
)
def test_condor_drain_refuses_what_the_real_one_refuses(tools, argv, code, message):
    result = tools("25.0.1", "condor_drain", *argv)

    assert result.returncode == code
    assert message in result.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_condor_drain_drains_then_cancels(tools, version):
    assert tools(version, "condor_drain", "-graceful", "-reason", "lease", HOSTNAME).returncode == 0
    again = tools(version, "condor_drain", "-graceful", HOSTNAME)
    assert again.returncode == 1  # already draining
    assert tools(version, "condor_drain", "-cancel", HOSTNAME).returncode == 0


def test_condor_config_val_says_not_defined(tools):
    result = tools("25.0.1", "condor_config_val", "NO_SUCH_KNOB")

    assert result.returncode == 1
    assert result.stderr == "Not defined: NO_SUCH_KNOB\n"
