"""The seed node's user data: the template's copy is the files in seed/ and pool/ (no drift), it passes
shellcheck, fits EC2's limit and holds no token; the address script reads IMDSv2 on every boot; the
token step, run with strict fakes, puts a limited token with a lifetime into the SSM parameter and nowhere
else."""

from __future__ import annotations

import configparser
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from annex_local.template import load_template

from scripts.seed_userdata import FILES, LIB, ROOT, sub_body
from tests.unit.seed_sandbox import (
    IMDS,
    POOL_TOKEN_PARAMETER,
    STACK_VALUES,
    config_installs,
    make_sandbox,
    systemd_units,
    unpacked,
    user_data,
)

SHELLCHECK = Path(sys.executable).with_name("shellcheck")
USER_DATA_LIMIT = 16 * 1024  # EC2: user data is limited to 16 KB before base64 encoding


def shellcheck(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHELLCHECK), "--shell=bash", "--severity=style", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


# --- the template's copy ------------------------------------------------------------------------


def test_the_templates_user_data_is_the_files_in_seed_and_pool():
    user_data = load_template()["Resources"]["SeedInstance"]["Properties"]["UserData"]

    assert user_data == {"Fn::Base64": {"Fn::Sub": sub_body()}}, (
        "template.yaml's seed user data is stale: run `make seed-userdata` and commit it"
    )


def test_every_file_arrives_on_the_instance_exactly_as_committed():
    files = unpacked()

    for name, source, _mode in FILES:
        assert files[f"{LIB}/{name}"] == (ROOT / source).read_text(), source


def test_every_substitution_is_a_stack_value_and_the_settings_reach_seed_env():
    settings = unpacked()["/etc/annex-seed/seed.env"]

    assert f"POOL_TOKEN_PARAMETER='{POOL_TOKEN_PARAMETER}'" in settings
    assert "ANNEX_ENDPOINT='https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/v1'" in settings
    assert f"TOKEN_LIFETIME='{STACK_VALUES['SeedTokenLifetime']}'" in settings


def test_rendered_user_data_passes_shellcheck_and_fits_ec2s_limit(tmp_path):
    script = tmp_path / "user-data.sh"
    script.write_text(user_data())

    result = shellcheck(script)

    assert result.returncode == 0, result.stdout
    assert len(user_data().encode()) <= USER_DATA_LIMIT


@pytest.mark.parametrize("name", [name for name, _source, mode in FILES if mode == "0755"])
def test_each_seed_script_passes_shellcheck(tmp_path, name):
    script = tmp_path / name
    script.write_text(unpacked()[f"{LIB}/{name}"])

    result = shellcheck(script)

    assert result.returncode == 0, result.stdout


def test_user_data_names_the_parameter_but_never_holds_a_token():
    script = user_data()

    assert f"POOL_TOKEN_PARAMETER='{POOL_TOKEN_PARAMETER}'" in script
    assert "eyJ" not in script  # every IDTOKENS token (a JWT) starts so
    assert "aws ssm put-parameter" in script  # the token is written at boot, by the instance


# --- the address script, every boot --------------------------------------------------------------


def test_the_address_script_writes_the_discovered_addresses_for_htcondor(tmp_path):
    box = make_sandbox(tmp_path)

    result = box.run("annex-seed-address")

    assert result.returncode == 0, result.stderr
    conf = box.condor / "config.d" / "50-annex-seed-address.conf"
    assert f"TCP_FORWARDING_HOST = {IMDS['public-ipv4']}\n" in conf.read_text()
    assert f"CONDOR_HOST = {IMDS['local-ipv4']}\n" in conf.read_text()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert [p.name for p in conf.parent.iterdir() if p.name.startswith(".")] == []


def test_the_address_script_follows_a_new_address_on_the_next_boot(tmp_path):
    box = make_sandbox(tmp_path)
    box.run("annex-seed-address")
    (box.state / "imds.json").write_text(json.dumps({**IMDS, "public-ipv4": "198.51.100.7"}))

    box.run("annex-seed-address")

    conf = (box.condor / "config.d" / "50-annex-seed-address.conf").read_text()
    assert "TCP_FORWARDING_HOST = 198.51.100.7\n" in conf
    assert IMDS["public-ipv4"] not in conf


def test_without_a_public_address_the_script_fails_and_keeps_the_last_good_one(tmp_path):
    box = make_sandbox(tmp_path)
    box.run("annex-seed-address")
    before = (box.condor / "config.d" / "50-annex-seed-address.conf").read_text()
    (box.state / "imds.json").write_text(json.dumps({k: v for k, v in IMDS.items() if k != "public-ipv4"}))

    result = box.run("annex-seed-address")

    assert result.returncode == 1
    assert "could not read" in result.stderr
    assert (box.condor / "config.d" / "50-annex-seed-address.conf").read_text() == before


# --- the token step ------------------------------------------------------------------------------


def files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text in p.read_text(errors="replace")]


def test_the_token_reaches_the_parameter_encrypted_and_nothing_else(tmp_path):
    box = make_sandbox(tmp_path)
    box.run("annex-seed-address")

    result = box.run("annex-seed-token")

    assert result.returncode == 0, result.stderr
    (issued,) = box.issued()
    token = issued["token"]
    stored = box.parameter()
    assert stored["Value"].strip() == token
    assert (stored["Type"], stored["Tier"]) == ("SecureString", "Standard")  # encrypted, and free
    assert token not in result.stdout + result.stderr
    # Never in a command line: the CLI read it from a private file in a private directory.
    assert all(token not in " ".join(argv) for argv in box.jsonl("aws-argv.jsonl"))
    assert box.jsonl("aws-files.jsonl") == [{"file": 0o600, "dir": 0o700}]
    # And gone afterwards: no file outside the fakes' own records holds it.
    outside_fakes = [p for p in files_holding(tmp_path, token) if box.state not in p.parents]
    assert outside_fakes == []


def test_the_token_is_for_the_annex_identity_with_a_lifetime_and_only_a_nodes_rights(tmp_path):
    box = make_sandbox(tmp_path)
    box.run("annex-seed-address")

    box.run("annex-seed-token")

    (issued,) = box.issued()
    assert issued["identity"] == f"annex@{IMDS['local-ipv4']}"  # TRUST_DOMAIN = the seed's CONDOR_HOST
    assert issued["lifetime"] == STACK_VALUES["SeedTokenLifetime"]
    assert sorted(issued["authz"]) == ["ADVERTISE_MASTER", "ADVERTISE_STARTD", "READ"]


def test_the_token_step_is_idempotent_and_renews_at_half_its_lifetime(tmp_path):
    box = make_sandbox(tmp_path)
    box.run("annex-seed-address")
    box.run("annex-seed-token")

    again = box.run("annex-seed-token")

    assert again.returncode == 0
    assert len(box.issued()) == 1
    marker = Path(box.env()["ANNEX_SEED_STATE"]) / "token-issued-at"
    lifetime = int(STACK_VALUES["SeedTokenLifetime"])
    marker.write_text(f"{int(marker.read_text()) - lifetime // 2 - 1}\n")

    renewed = box.run("annex-seed-token")

    assert renewed.returncode == 0, renewed.stderr
    assert len(box.issued()) == 2
    assert box.parameter()["Value"].strip() == box.issued()[-1]["token"]
    assert box.parameter()["Version"] == 2  # the renewal replaced the token (--overwrite)


def test_a_refused_write_fails_leaves_no_token_behind_and_is_retried_next_time(tmp_path):
    box = make_sandbox(tmp_path)
    box.run("annex-seed-address")
    # the seed role may write only another parameter (a policy that does not match the stack's name)
    (box.state / "iam.json").write_text(json.dumps({"PutParameter": POOL_TOKEN_PARAMETER + "-other"}))

    result = box.run("annex-seed-token")

    assert result.returncode != 0
    (issued,) = box.issued()
    assert issued["token"] not in result.stdout + result.stderr
    assert [p for p in files_holding(tmp_path, issued["token"]) if box.state not in p.parents] == []
    assert not (Path(box.env()["ANNEX_SEED_STATE"]) / "token-issued-at").exists()


# --- what the boot sets up ------------------------------------------------------------------------


def boot_script() -> str:
    return unpacked()[f"{LIB}/annex-seed-boot"]


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(systemd_units(boot_script())[name])
    return parser


def test_the_boot_installs_the_seed_config_and_the_pool_side_of_annex():
    installs = dict(config_installs(boot_script()))

    assert installs == {
        "annex-seed.conf": "/etc/condor/config.d/10-annex-seed.conf",
        "annex-central-manager.conf": "/etc/condor/config.d/20-annex-central-manager.conf",
    }


def test_the_address_script_runs_before_htcondor_on_every_boot():
    address = unit("annex-seed-address.service")

    assert address["Unit"]["Before"] == "condor.service"
    assert address["Install"]["RequiredBy"] == "condor.service"
    assert address["Service"]["ExecStart"] == "/usr/local/sbin/annex-seed-address"
    assert "enable annex-seed-address.service" in boot_script()
    default_conf = re.search(r"ANNEX_SEED_ADDRESS_CONF:-(\S+)\}", unpacked()[f"{LIB}/annex-seed-address"])
    assert default_conf is not None
    assert default_conf.group(1).startswith("/etc/condor/config.d/")


def test_the_token_is_issued_after_htcondor_and_renewed_by_a_daily_timer():
    token = unit("annex-seed-token.service")
    timer = unit("annex-seed-token.timer")

    assert "condor.service" in token["Unit"]["After"].split()
    assert token["Service"]["UMask"] == "0077"
    assert timer["Timer"]["OnCalendar"] == "daily"
    assert timer["Timer"]["Persistent"] == "true"
    assert (
        "enable annex-seed-address.service annex-seed-token.service annex-seed-token.timer" in boot_script()
    )


def test_annex_client_gets_the_stacks_endpoint_for_every_login_shell():
    script = boot_script()

    assert """printf "export ANNEX_ENDPOINT='%s'\\n" "$ANNEX_ENDPOINT" > /etc/profile.d/annex.sh""" in script
    assert '/opt/annex-client/bin/pip install --quiet "$CLIENT_REQUIREMENT"' in script
