"""The pool side: pool/annex-central-manager.conf read by HTCondor's own configuration reader on top
of a central manager's configuration, and pool/check-central-manager.sh run against it with a
condor_config_val answered by htcondor2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.node_sandbox import CONDOR_CONFIG_VAL, load_condor_config

REPO = Path(__file__).resolve().parents[2]
CM_CONF = REPO / "pool" / "annex-central-manager.conf"
CHECK = REPO / "pool" / "check-central-manager.sh"
SHELLCHECK = Path(sys.executable).with_name("shellcheck")
CM_BASE = """\
use ROLE : CentralManager
use SECURITY : RECOMMENDED_V9_0
TRUST_DOMAIN = pool.example.org
LOCAL_CONFIG_DIR = {etc}/config.d
"""


class CentralManager:
    def __init__(self, tmp_path: Path, *, site: str = "", annex_conf: str | None = None) -> None:
        self.etc = tmp_path / "etc"
        (self.etc / "config.d").mkdir(parents=True)
        (self.etc / "condor_config").write_text(CM_BASE.format(etc=self.etc) + site)
        conf = CM_CONF.read_text() if annex_conf is None else annex_conf
        (self.etc / "config.d" / "50-annex-central-manager.conf").write_text(conf)
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        tool = self.bin / "condor_config_val"
        tool.write_text(CONDOR_CONFIG_VAL.format(python=sys.executable))
        tool.chmod(0o755)

    def collector(self) -> dict[str, str]:
        return load_condor_config(self.etc / "condor_config", "COLLECTOR")

    def check(self) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.bin}:/usr/bin", "CONDOR_CONFIG": str(self.etc / "condor_config")}
        return subprocess.run(
            ["/bin/bash", str(CHECK)], env=env, capture_output=True, text=True, check=False, timeout=120
        )


def entries(value: str) -> list[str]:
    return value.replace(",", " ").split()


def test_the_annex_identity_is_added_and_the_pools_own_nodes_stay_admitted(tmp_path):
    collector = CentralManager(tmp_path).collector()

    for level in ("ADVERTISE_STARTD", "ADVERTISE_MASTER"):
        allowed = entries(collector[f"ALLOW_{level}"])
        assert "annex@pool.example.org" in allowed
        assert set(entries(collector["ALLOW_DAEMON"])) <= set(allowed)
        assert entries(collector["ALLOW_DAEMON"])  # the default security config has some


def test_what_the_site_allowed_before_is_kept(tmp_path):
    site = "ALLOW_ADVERTISE_STARTD = condor_pool@pool.example.org/10.0.0.0/8\n"
    collector = CentralManager(tmp_path, site=site).collector()

    assert entries(collector["ALLOW_ADVERTISE_STARTD"]) == [
        "condor_pool@pool.example.org/10.0.0.0/8",
        "annex@pool.example.org",
    ]


def test_the_check_passes_on_a_central_manager_with_the_annex_settings(tmp_path):
    result = CentralManager(tmp_path).check()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "checking that annex@pool.example.org may join this pool" in result.stdout
    assert "all checks passed" in result.stdout
    assert "FAIL" not in result.stdout


@pytest.mark.parametrize(
    ("annex_conf", "site", "failure"),
    [
        (
            "",
            "",
            "ALLOW_ADVERTISE_STARTD (undefined, so ALLOW_DAEMON: condor@*  condor_pool@*) does not admit",
        ),
        (  # the naive setting the issue warns about
            "ALLOW_ADVERTISE_STARTD = annex@$(TRUST_DOMAIN)\n"
            "ALLOW_ADVERTISE_MASTER = annex@$(TRUST_DOMAIN)\n",
            "",
            "ALLOW_ADVERTISE_STARTD lacks condor@* condor_pool@* from ALLOW_DAEMON",
        ),
        (
            None,
            "DENY_ADVERTISE_MASTER = annex@*\n",
            "DENY_ADVERTISE_MASTER (annex@*) refuses annex@pool.example.org",
        ),
        (None, "SEC_DEFAULT_AUTHENTICATION_METHODS = FS, SSL\n", "does not include IDTOKENS"),
        (None, "ENABLE_CCB_SERVER = False\n", "ENABLE_CCB_SERVER is off"),
    ],
)
def test_the_check_fails_naming_what_is_wrong(tmp_path, annex_conf, site, failure):
    # A site file read after the annex settings (config.d sorts after them).
    cm = CentralManager(tmp_path, annex_conf=annex_conf)
    (cm.etc / "config.d" / "90-site.conf").write_text(site)

    result = cm.check()

    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL: ")]
    assert any(failure in line for line in failed), result.stdout


def test_the_check_script_passes_shellcheck():
    result = subprocess.run(
        [str(SHELLCHECK), "--shell=bash", "--severity=style", str(CHECK)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout
