"""The renderer checks every value itself: a hostile value fed straight to it (not through the API's
models) must not reach the boot script or the HTCondor configuration it writes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from annex.core.config import LaunchSettings
from annex.launch.userdata import NodeConfig, render_user_data, unpack_user_data

from tests.unit.builders import make_annex
from tests.unit.node_sandbox import NodeSandbox, load_condor_config, node_config
from tests.unit.test_launch_settings import ENV as LAUNCH_ENV

INJECT = '"\nSTART = True\n#'


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("annex_name", f"bio{INJECT}"),
        ("annex_name", "bio$(START)"),
        ("annex_name", "bio run"),
        ("annex_id", "ax-0123456789abcdef\nSTART = True"),
        ("condor_user", f"alice{INJECT}"),
        ("condor_user", "alice@example.org"),
        ("condor_user", "$(reboot)"),
        ("condor_user", ""),
        ("share_with", ("bob", "carol\nSTART = True")),
        ("share_with", ("bob", "bob")),
        ("share_with", ("alice",)),  # the owner
        ("central_manager", "cm.pool.example.org\nSTART = True"),
        ("central_manager", "cm.pool.example.org:9618 $(START)"),
        ("central_manager", "cm.pool.example.org:99999"),
        ("pool_token_parameter", '/annex/x"}'),
        ("pool_token_parameter", "annex/no-leading-slash"),
        ("heartbeat_url", "https://h.example.org/v1/heartbeat$(reboot)"),
        ("ssm_endpoint", "https://ssm.us-east-1.amazonaws.com/`reboot`"),
        ("all_my_jobs", "true"),
        ("use_ccb", 1),
        ("idle_timeout", timedelta(seconds=1.5)),
        ("drain_lead", timedelta(seconds=-1)),
    ],
)
def test_a_hostile_or_malformed_value_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        render_user_data(node_config(**{field: value}))


def test_the_largest_safe_values_render_within_the_user_data_limit_and_configure_htcondor(tmp_path):
    config = node_config(
        annex_name="a" + "b.c_d-" * 8 + "z",
        condor_user="_svc.batch-user_01",
        share_with=tuple(f"user{i:02d}" for i in range(20)),
        all_my_jobs=True,
    )
    node = NodeSandbox(tmp_path, config)
    assert node.run("read_instance_identity && install_agents && write_condor_config").returncode == 0

    startd = load_condor_config(node.etc / "condor_config", "STARTD")

    assert startd["AnnexName"] == f'"{config.annex_name}"'
    assert startd["AnnexOwner"] == '"_svc.batch-user_01"'
    assert startd["AnnexSharedWith"] == '"' + ",".join(config.share_with) + '"'
    assert startd["AnnexAllMyJobs"] == "true"


def test_values_reach_the_script_shell_quoted_and_nothing_else():
    script = unpack_user_data(render_user_data(node_config(share_with=("bob", "carol"))))

    assert "SHARE_WITH=bob,carol" in script.splitlines()
    assert "ALL_MY_JOBS=false" in script.splitlines()
    assert "USE_CCB=true" in script.splitlines()
    assert "@@" not in script


# --- from the annex record and the launch settings ---------------------------------------------------


def launch_settings(**changes: str) -> LaunchSettings:
    return LaunchSettings.from_env({**LAUNCH_ENV, **changes})


def test_the_node_config_comes_from_the_annex_record_and_the_launch_settings():
    annex = make_annex(condor_user="rsmith", share_with=["bob"], all_my_jobs=True)

    config = NodeConfig.for_annex(annex, launch_settings(DRAIN_LEAD="7m", USE_CCB="false"))

    assert (config.condor_user, config.share_with, config.all_my_jobs) == ("rsmith", ("bob",), True)
    assert (config.drain_lead, config.use_ccb) == (timedelta(minutes=7), False)
    assert (config.condor_host, config.collector_host) == ("cm.pool.example.org", "cm.pool.example.org:9618")
    render_user_data(config)  # and it renders


def test_a_record_from_before_condor_user_falls_back_to_the_login_in_its_owner_arn():
    assert NodeConfig.for_annex(make_annex(), launch_settings()).condor_user == "alice"
    sso = make_annex(owner="arn:aws:sts::123456789012:assumed-role/SSO/alice@example.org")
    with pytest.raises(ValueError, match="condor_user"):
        render_user_data(NodeConfig.for_annex(sso, launch_settings()))
