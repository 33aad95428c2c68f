"""Matchmaking with HTCondor's ClassAd library: the slot ad an annex node advertises, built from the
configuration HTCondor's own reader loads after a hostile site image, against condor_submit-like job
ads. symmetricMatch evaluates both Requirements as the negotiator does. Then the master ad: the idle
shutdown policy and the constraints `condor_status -annex` and `condor_off -annex NAME` use."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import classad2
import htcondor2  # noqa: F401 - registers HTCondor's ClassAd functions (stringListMember), as in every daemon
import pytest
from annex.api.policy import resolve_condor_user
from annex.core.config import Policy

from tests.unit.node_sandbox import NodeSandbox, load_condor_config, node_config

# What condor_submit writes for a vanilla job (condor_submit -dry-run shows it).
SUBMIT_REQUIREMENTS = (
    '(TARGET.Arch == "X86_64") && (TARGET.OpSys == "LINUX") && (TARGET.Disk >= RequestDisk) && '
    "(TARGET.Memory >= RequestMemory) && (TARGET.Cpus >= RequestCpus) && (TARGET.HasFileTransfer)"
)
# The job transform of `use feature:HPC_ANNEX` (src/condor_utils/param_info.in, [$FEATURE.HPC_ANNEX],
# JOB_TRANSFORM_AssignAnnex): applied to jobs with TargetAnnexName, on an access point whose
# ANNEX_TOKEN_DOMAIN is ap.example.org.
HPC_ANNEX_APPLIES = "TargetAnnexName =!= undefined"
HPC_ANNEX_REQUIREMENTS = (
    'ifThenElse(TARGET.AuthenticatedIdentity is undefined, true, "{owner}@ap.example.org" == '
    "TARGET.AuthenticatedIdentity) && (MY.TargetAnnexName == TARGET.AnnexName) && ({requirements})"
)
ANNEX_ID = "ax-0123456789abcdef"
# condor_off -annex-name NAME / condor_status -annex-name NAME (src/condor_tools/tool.cpp,
# src/condor_status.V6/status.cpp): ATTR_ANNEX_NAME " =?= \"%s\""; bare -annex: "IsAnnex".
ANNEX_NAME_CONSTRAINT = 'AnnexName =?= "{name}"'
ANY_ANNEX_CONSTRAINT = "IsAnnex"
LEASE_LEFT = timedelta(hours=2)


def job(owner: str = "alice", requirements: str = SUBMIT_REQUIREMENTS, **attrs: object) -> classad2.ClassAd:
    ad = classad2.ClassAd(
        {
            "Owner": owner,
            "User": f"{owner}@ap.example.org",
            "JobUniverse": 5,
            "Cmd": "/home/alice/run.sh",
            "RequestCpus": 1,
            "RequestMemory": 2048,
            "RequestDisk": 1048576,
            **attrs,
        }
    )
    ad["Requirements"] = classad2.ExprTree(requirements)
    return ad


def hpc_annex_transform(ad: classad2.ClassAd) -> classad2.ClassAd:
    """What an access point with `use feature:HPC_ANNEX` does to a job at submit time."""
    if classad2.ExprTree(HPC_ANNEX_APPLIES).eval(ad) is not True:
        return ad
    requirements = HPC_ANNEX_REQUIREMENTS.format(owner=ad["Owner"], requirements=ad["Requirements"])
    ad["Requirements"] = classad2.ExprTree(requirements)
    ad["JobMachineAttrs"] = "AnnexName"
    return ad


@dataclass
class Node:
    slot: classad2.ClassAd
    master: classad2.ClassAd
    daemon_shutdown: classad2.ExprTree


def boot_node(tmp_path, **changes: object) -> Node:
    """Render the user data, run its configuration steps over a hostile site image, and build the
    slot and master ads from what HTCondor's configuration reader makes of the result."""
    sandbox = NodeSandbox(tmp_path, node_config(**changes))
    sandbox.add_site_overrides()
    result = sandbox.run("read_instance_identity && install_agents && write_condor_config")
    assert result.returncode == 0, result.output
    config_file = sandbox.etc / "condor_config"
    startd = load_condor_config(config_file, "STARTD")
    master = load_condor_config(config_file, "MASTER")
    tool = load_condor_config(config_file)

    slot = classad2.ClassAd(
        {
            # What a partitionable slot of a 4-core, 16 GB node advertises besides the configuration.
            "Name": "slot1@ip-10-0-1-17.ec2.internal",
            "SlotType": "Partitionable",
            "PartitionableSlot": True,
            "Arch": "X86_64",
            "OpSys": "LINUX",
            "Cpus": 4,
            "Memory": 15600,
            "Disk": 100_000_000,
            "HasFileTransfer": True,
            # Inserted by the collector: the identity the node authenticated as (collector_engine.cpp).
            "AuthenticatedIdentity": "annex@pool.example.org",
        }
    )
    for name in startd["STARTD_ATTRS"].replace(",", " ").split():
        if name in startd:
            slot[name] = classad2.ExprTree(str(startd[name]))
    slot["START"] = classad2.ExprTree(startd["START"])
    slot["WithinResourceLimits"] = classad2.ExprTree(
        "TARGET.RequestCpus <= MY.Cpus && TARGET.RequestMemory <= MY.Memory && TARGET.RequestDisk <= MY.Disk"
    )
    slot["Requirements"] = classad2.ExprTree("START && WithinResourceLimits")

    now = int(time.time())
    master_ad = classad2.ClassAd({"Name": "ip-10-0-1-17.ec2.internal", "MyType": "DaemonMaster"})
    for name in master["MASTER_ATTRS"].replace(",", " ").split():
        if name in master:
            master_ad[name] = classad2.ExprTree(str(master[name]))
    master_ad["DaemonStartTime"] = now - 3600
    master_ad["CurrentTime"] = classad2.ExprTree("time()")
    return Node(slot, master_ad, classad2.ExprTree(tool["MASTER.DAEMON_SHUTDOWN"]))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> dict[str, Node]:
    lease = datetime.now(UTC).replace(microsecond=0) + LEASE_LEFT
    sso_user = resolve_condor_user(
        "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Researcher_0a1b/alice@example.org",
        "alice",
        Policy.model_construct(condor_user_map=()),
    )
    made = {
        "targeted": {},
        "all-my-jobs": {"all_my_jobs": True},
        "shared": {"share_with": ("bob",)},
        "carol": {"condor_user": "carol"},  # another owner's annex with the same name
        "sso": {"condor_user": sso_user},
        "draining": {"lease_expires_at": datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=4)},
    }
    return {
        name: boot_node(tmp_path_factory.mktemp(name), **{"lease_expires_at": lease, **changes})
        for name, changes in made.items()
    }


HOUR = 3600
# (annex, job, matches): the policy, one row per case a researcher or an administrator would try.
MATRIX = [
    ("targeted", job(AnnexTarget="bio-run"), True),
    ("targeted", job(AnnexTarget=ANNEX_ID), True),
    ("targeted", job(), False),  # the owner did not opt in to all idle jobs
    ("targeted", job(AnnexTarget="other-run"), False),
    ("targeted", job(AnnexTarget="BIO-RUN"), False),  # names are exact
    ("targeted", job("bob", AnnexTarget="bio-run"), False),  # another user naming alice's annex
    ("targeted", job("bob", AnnexTarget=ANNEX_ID), False),
    ("targeted", job("alice", AnnexTarget="bio-run", RequestCpus=8), False),  # larger than the node
    ("all-my-jobs", job(), True),
    ("all-my-jobs", job(AnnexTarget="bio-run"), True),
    ("all-my-jobs", job(AnnexTarget="other-run"), False),  # sent to another annex
    ("all-my-jobs", job(TargetAnnexName="hpc-1"), False),  # sent to an HPC annex
    ("all-my-jobs", job("bob"), False),
    ("shared", job("bob", AnnexTarget="bio-run"), True),
    ("shared", job("bob"), False),  # sharing is for jobs sent to the annex
    ("shared", job("carol", AnnexTarget="bio-run"), False),
    ("shared", job("alice", AnnexTarget="bio-run"), True),
    ("carol", job(AnnexTarget="bio-run"), False),  # alice's job, carol's annex of the same name
    ("carol", job("carol", AnnexTarget="bio-run"), True),
    ("sso", job(AnnexTarget="bio-run"), True),  # owner alice@example.org in IAM, alice on the AP
    ("sso", job("alice@example.org", AnnexTarget="bio-run"), False),
    # An access point with feature:HPC_ANNEX: our attribute is left alone, TargetAnnexName is not ours.
    ("targeted", hpc_annex_transform(job(AnnexTarget="bio-run")), True),
    ("targeted", hpc_annex_transform(job(TargetAnnexName="bio-run")), False),
    ("all-my-jobs", hpc_annex_transform(job(TargetAnnexName="bio-run")), False),
    # Lease-aware: two hours left; the drain lead is five minutes.
    ("targeted", job(AnnexTarget="bio-run", AllowedExecuteDuration=HOUR), True),
    ("targeted", job(AnnexTarget="bio-run", AllowedExecuteDuration=3 * HOUR), False),
    ("targeted", job(AnnexTarget="bio-run", AllowedJobDuration=3 * HOUR), False),
    ("targeted", job(AnnexTarget="bio-run", AllowedJobDuration=HOUR), True),
    ("targeted", job(AnnexTarget="bio-run", AllowedExecuteDuration=HOUR, AllowedJobDuration=3 * HOUR), True),
    ("draining", job(AnnexTarget="bio-run"), False),  # within the drain lead: nothing new starts
]


@pytest.mark.parametrize(("annex", "ad", "matches"), MATRIX)
def test_matchmaking_matrix(nodes, annex, ad, matches):
    slot = nodes[annex].slot

    assert slot.symmetricMatch(ad) is matches


def matrix_outcomes(nodes: dict[str, Node], start: str) -> list[bool]:
    outcomes = []
    for annex, ad, _ in MATRIX:
        slot = classad2.ClassAd(dict(nodes[annex].slot.items()))
        slot["START"] = classad2.ExprTree(start)
        outcomes.append(slot.symmetricMatch(ad))
    return outcomes


def test_the_matrix_fails_when_any_and_of_the_policy_becomes_or(nodes):
    start = str(nodes["targeted"].slot["START"])
    expected = [matches for _, _, matches in MATRIX]
    assert matrix_outcomes(nodes, start) == expected
    survivors = []
    pieces = start.split(" && ")
    for i in range(1, len(pieces)):
        loosened = " && ".join(pieces[:i]) + " || " + " && ".join(pieces[i:])
        if matrix_outcomes(nodes, loosened) == expected:
            survivors.append(loosened)

    assert survivors == []


def test_a_partitionable_slot_advertises_the_annex_and_its_lease(nodes):
    slot = nodes["targeted"].slot

    assert slot.eval("IsAnnex") is True
    assert slot.eval("AnnexName") == "bio-run"
    assert slot.eval("AnnexOwner") == "alice"
    assert abs(slot.eval("AnnexLeaseExpires") - (time.time() + LEASE_LEFT.total_seconds())) < 120
    assert classad2.ExprTree(ANY_ANNEX_CONSTRAINT).eval(slot) is True  # condor_status -annex
    assert classad2.ExprTree(ANNEX_NAME_CONSTRAINT.format(name="bio-run")).eval(slot) is True


def test_condor_off_annex_finds_the_master_of_this_annex_only(nodes):
    master = nodes["targeted"].master

    assert classad2.ExprTree(ANNEX_NAME_CONSTRAINT.format(name="bio-run")).eval(master) is True
    assert classad2.ExprTree(ANNEX_NAME_CONSTRAINT.format(name="other-run")).eval(master) is False
    assert classad2.ExprTree(ANY_ANNEX_CONSTRAINT).eval(master) is True
    assert master.eval("AnnexId") == ANNEX_ID


@pytest.mark.parametrize(
    ("startd_start_time", "master_age", "shuts_down"),
    [
        (0, 3600, True),  # the startd exited (idle shutdown) and did not come back
        (0, 100, False),  # the master just started: give the startd time
        ("now", 3600, False),  # the startd runs
    ],
)
def test_the_master_shutdown_policy_evaluated_on_the_master_ad(
    nodes, startd_start_time, master_age, shuts_down
):
    node = nodes["targeted"]
    ad = classad2.ClassAd(dict(node.master.items()))
    now = int(time.time())
    ad["STARTD_StartTime"] = now - 60 if startd_start_time == "now" else startd_start_time
    ad["DaemonStartTime"] = now - master_age

    assert node.daemon_shutdown.eval(ad) is shuts_down
