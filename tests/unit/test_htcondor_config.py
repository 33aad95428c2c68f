"""The HTCondor configuration an annex node writes, read by HTCondor's own configuration reader
(htcondor2, from the `htcondor` wheel) after a simulated site image whose later files and
condor_config.local try to replace the annex policy; every expression parsed by classad2."""

from __future__ import annotations

from datetime import timedelta

import classad2
import pytest

from tests.unit.node_sandbox import NodeSandbox, load_condor_config, node_config

ANNEX_STARTD_ATTRS = [
    *("IsAnnex", "AnnexName", "AnnexId", "AnnexOwner", "AnnexSharedWith", "AnnexAllMyJobs"),
    *("AnnexLeaseExpires", "AnnexDrainLead", "CloudProvider", "CloudPlatform", "CloudInstanceID"),
    *("CloudVMType", "CloudZone", "CloudRegion", "CloudImage", "CloudInterruptible"),
]
BOOT_STEPS = "read_instance_identity && install_agents && write_condor_config"


def words(value: str) -> list[str]:
    return value.replace(",", " ").split()


@pytest.fixture
def node(tmp_path) -> NodeSandbox:
    sandbox = NodeSandbox(tmp_path)
    sandbox.add_site_overrides()
    result = sandbox.run(BOOT_STEPS)
    assert result.returncode == 0, result.output
    return sandbox


def annex_file_value(node: NodeSandbox, knob: str) -> str:
    """The right-hand side the boot script wrote for KNOB in the annex file itself."""
    for line in (node.etc / "annex.conf").read_text().splitlines():
        name, sep, value = line.partition(" = ")
        if sep and name == knob:
            return value
    raise AssertionError(f"{knob} is not in annex.conf")


def test_the_annex_policy_wins_over_the_site_image_files_and_condor_config_local(node):
    startd = load_condor_config(node.etc / "condor_config", "STARTD")
    tool = load_condor_config(node.etc / "condor_config")

    # The site tried START = True (later config.d file, STARTD.START, condor_config.local): none won.
    assert startd["START"] == annex_file_value(node, "START") != "True"
    assert tool["STARTD.START"] == startd["START"]
    assert "TARGET.Owner =?= MY.AnnexOwner" in startd["START"]
    assert startd["MAXJOBRETIREMENTTIME"] == annex_file_value(node, "MAXJOBRETIREMENTTIME") != "0"
    assert startd["STARTD_NOCLAIM_SHUTDOWN"] == 1200  # the annex's 20-minute idle timeout
    assert startd["AnnexOwner"] == '"alice"'  # not the site's "mallory"
    assert tool["MASTER.DAEMON_SHUTDOWN"] == annex_file_value(node, "MASTER.DAEMON_SHUTDOWN") != "False"
    assert tool["DEFAULT_MASTER_SHUTDOWN_SCRIPT"].endswith("/usr/local/sbin/annex-poweroff")
    # Additive lists: the site's own attribute stays, every annex attribute is there.
    assert set(words(startd["STARTD_ATTRS"])) >= {"SiteAttr", *ANNEX_STARTD_ATTRS}
    assert set(words(tool["MASTER_ATTRS"])) >= {"SiteAttr", "IsAnnex", "AnnexName", "AnnexId", "AnnexOwner"}
    # The annex file is the last one read.
    assert words(tool["LOCAL_CONFIG_FILE"])[-1] == str(node.etc / "annex.conf")


def test_central_manager_host_and_port_land_in_the_right_knobs(node):
    tool = load_condor_config(node.etc / "condor_config")

    assert tool["CONDOR_HOST"] == "cm.pool.example.org"  # no port: it feeds host-based ALLOW lists
    assert tool["COLLECTOR_HOST"] == "cm.pool.example.org:9618"
    assert tool["CCB_ADDRESS"] == "cm.pool.example.org:9618"
    assert words(tool["DAEMON_LIST"]) == ["MASTER", "STARTD"]


def test_ccb_can_be_turned_off(tmp_path):
    node = NodeSandbox(tmp_path, node_config(use_ccb=False))
    assert node.run(BOOT_STEPS).returncode == 0

    assert load_condor_config(node.etc / "condor_config").get("CCB_ADDRESS", "") == ""


@pytest.mark.parametrize(("life_cycle", "interruptible"), [("spot", True), ("on-demand", False)])
def test_cloud_attributes_are_static_and_copied_into_job_ads(tmp_path, life_cycle, interruptible):
    node = NodeSandbox(tmp_path)
    assert node.run(BOOT_STEPS, FAKE_LIFE_CYCLE=life_cycle).returncode == 0
    startd = load_condor_config(node.etc / "condor_config", "STARTD")

    ad = classad2.ClassAd({name: classad2.ExprTree(startd[name]) for name in ANNEX_STARTD_ATTRS})
    assert ad.eval("CloudInstanceID") == "i-0123456789abcdef0"
    assert ad.eval("CloudVMType") == "c7i.xlarge"
    assert ad.eval("CloudZone") == "us-east-1b"
    assert ad.eval("CloudRegion") == "us-east-1"
    assert ad.eval("CloudInterruptible") is interruptible
    assert ad.eval("IsAnnex") is True
    assert ad.eval("AnnexId") == "ax-0123456789abcdef"
    assert set(words(startd["SYSTEM_JOB_MACHINE_ATTRS"])) >= {"AnnexName", "AnnexId", "CloudInstanceID"}


def test_every_expression_the_node_configures_parses_as_a_classad_expression(node):
    startd = load_condor_config(node.etc / "condor_config", "STARTD")
    tool = load_condor_config(node.etc / "condor_config")
    expressions = {name: startd[name] for name in ("START", "MAXJOBRETIREMENTTIME", *ANNEX_STARTD_ATTRS)}
    expressions["MASTER.DAEMON_SHUTDOWN"] = tool["MASTER.DAEMON_SHUTDOWN"]

    for name, text in expressions.items():
        try:
            classad2.ExprTree(text)
        except classad2.ClassAdException as exc:  # pragma: no cover - the failure message
            pytest.fail(f"{name} = {text!r} does not parse: {exc}")


def test_retirement_lets_a_running_job_finish_until_the_lease_ends(node):
    startd = load_condor_config(node.etc / "condor_config", "STARTD")
    lease = int(classad2.ExprTree(startd["AnnexLeaseExpires"]).eval())
    retirement = classad2.ExprTree(startd["MAXJOBRETIREMENTTIME"])
    job = classad2.ClassAd({"Owner": "alice"})
    # The startd evaluates MAXJOBRETIREMENTTIME with the slot as MY and the job as TARGET, and keeps the
    # job while MAXJOBRETIREMENTTIME - job age > 0 (Resource::evalRetirementRemaining).
    slot = classad2.ClassAd({"AnnexLeaseExpires": lease, "JobStart": lease - 3 * 3600})
    job_age_at_drain = 3 * 3600 - 5 * 60  # a three-hour-old job, drained 5 minutes before the lease ends

    remaining = retirement.eval(slot, job) - job_age_at_drain

    assert remaining == 5 * 60  # it runs until the lease ends
    assert retirement.eval(classad2.ClassAd({"AnnexLeaseExpires": lease}), job) == 0  # no job running


# --- the boot check: an override that still wins powers the node off, with the reason -------------


def test_the_boot_check_passes_when_the_annex_policy_is_effective(node):
    node.stub_reporter()

    result = node.run("verify_effective_config")

    assert result.returncode == 0, result.output
    assert "verified: the effective HTCondor configuration holds the annex policy" in result.stdout
    assert not node.powered_off()


@pytest.mark.parametrize(
    ("name", "text", "knob"),
    [
        # condor_config.local replaces the list of local files: the annex file is never read.
        ("condor_config.local", "LOCAL_CONFIG_FILE = {etc}/condor_config.local\nSTART = True\n", "START"),
        # A config.d file read after 99-annex.conf does the same.
        ("config.d/zzz-site.conf", "LOCAL_CONFIG_FILE =\nSTART = True\n", "START"),
        # A later file is appended after the annex file and takes the owner's attribute away.
        (
            "config.d/zzz-site.conf",
            "LOCAL_CONFIG_FILE = $(LOCAL_CONFIG_FILE) {etc}/late.conf\n",
            "MAXJOBRETIREMENTTIME",
        ),
    ],
)
def test_an_override_that_still_wins_is_reported_and_powers_the_node_off(tmp_path, name, text, knob):
    node = NodeSandbox(tmp_path)
    (node.etc / "late.conf").write_text("MAXJOBRETIREMENTTIME = 0\n")
    node.add_site_overrides({name: text.format(etc=node.etc)})
    assert node.run(BOOT_STEPS).returncode == 0
    node.stub_reporter()

    result = node.run("verify_effective_config")

    assert result.returncode != 0
    assert node.powered_off()
    (reason,) = node.reported()
    assert f"the effective {knob} is not the annex's" in reason
    assert f"PROBLEM: {reason}" in result.stdout


def test_drain_lead_and_lease_are_the_annex_values(tmp_path):
    node = NodeSandbox(tmp_path, node_config(drain_lead=timedelta(minutes=7)))
    assert node.run(BOOT_STEPS).returncode == 0
    startd = load_condor_config(node.etc / "condor_config", "STARTD")

    assert classad2.ExprTree(startd["AnnexDrainLead"]).eval() == 420
    assert int(classad2.ExprTree(startd["AnnexLeaseExpires"]).eval()) == int(
        node.config.lease_expires_at.timestamp()
    )


@pytest.mark.parametrize(("life_cycle", "vacate"), [("spot", 90), ("on-demand", 600)])
def test_a_spot_node_vacates_within_the_two_minute_notice(tmp_path, life_cycle, vacate):
    # HTCondor's default MachineMaxVacateTime is 600 s: a spot job told to vacate would outlive the notice.
    node = NodeSandbox(tmp_path)
    assert node.run(BOOT_STEPS, FAKE_LIFE_CYCLE=life_cycle).returncode == 0
    startd = load_condor_config(node.etc / "condor_config", "STARTD")

    assert int(str(startd["MachineMaxVacateTime"])) == vacate  # 600: HTCondor's own default
    agent_env = (node.root / "etc" / "annex" / "annex.env").read_text()
    assert "DRAIN_LEAD_SECONDS=300" in agent_env  # the agent drains this long before the lease ends
