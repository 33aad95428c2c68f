"""The seed node's HTCondor configuration, loaded by HTCondor's own config parser (the `htcondor` wheel)
exactly as the seed installs it: a central manager plus access point, TCP_FORWARDING_HOST from the
address the boot script discovered, and the annex identity allowed to advertise while the daemons' own
identities still are."""

from __future__ import annotations

import re
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import htcondor2
import pytest

from tests.unit.seed_sandbox import IMDS, SITE_CONFIG, make_sandbox

TRUST_DOMAIN = IMDS["local-ipv4"]


@pytest.fixture
def load(tmp_path: Path, monkeypatch) -> Callable[..., Any]:
    """Build the seed's config directory after `site_config`, run the address script, and load it."""

    def _load(site_config: str = SITE_CONFIG) -> Any:
        box = make_sandbox(tmp_path, site_config=site_config)
        result = box.run("annex-seed-address")
        assert result.returncode == 0, result.stderr
        monkeypatch.setenv("CONDOR_CONFIG", str(box.condor / "condor_config"))
        htcondor2.reload_config()
        return htcondor2.param

    # No reload afterwards: CONDOR_CONFIG=ONLY_ENV would stick for the rest of the process, and a
    # reload without CONDOR_CONFIG reads the machine's. Tests that load a config call reload_config.
    return _load


def authorized(allow_list: str, identity: str) -> bool:
    """Whether an ALLOW_* list admits an authenticated identity (user@domain, `*` wildcards)."""
    entries = [e for e in re.split(r"[\s,]+", allow_list) if e]
    return any(fnmatchcase(identity, e.split("/", 1)[0]) for e in entries)


def test_the_seed_is_a_central_manager_and_an_access_point_and_runs_no_jobs(load):
    param = load()

    daemons = set(param["DAEMON_LIST"].replace(",", " ").split())
    assert daemons == {"MASTER", "COLLECTOR", "NEGOTIATOR", "SCHEDD"}
    assert param["USE_SHARED_PORT"] is True


def test_tcp_forwarding_host_is_the_public_address_the_boot_script_discovered(load):
    param = load()

    assert param["TCP_FORWARDING_HOST"] == IMDS["public-ipv4"]
    assert param["CONDOR_HOST"] == IMDS["local-ipv4"]
    assert param["PRIVATE_NETWORK_NAME"] == IMDS["network/interfaces/macs/0e:12:34:56:78:9a/vpc-id"]
    assert param["TRUST_DOMAIN"] == TRUST_DOMAIN


@pytest.mark.parametrize("knob", ["ALLOW_ADVERTISE_STARTD", "ALLOW_ADVERTISE_MASTER"])
def test_annex_nodes_may_advertise_and_the_daemons_still_may(load, knob):
    param = load()

    assert authorized(param[knob], f"annex@{TRUST_DOMAIN}")
    assert authorized(param[knob], f"condor@{TRUST_DOMAIN}")
    assert authorized(param[knob], "condor@password")
    assert not authorized(param[knob], f"alice@{TRUST_DOMAIN}")
    assert not authorized(param[knob], "annex@other-pool.example.org")


@pytest.mark.parametrize("knob", ["ALLOW_ADVERTISE_STARTD", "ALLOW_ADVERTISE_MASTER"])
def test_a_site_list_set_before_the_annex_settings_is_kept(load, knob):
    # An identity ALLOW_DAEMON does not cover (condor@* would), as a site with its own node identity has.
    param = load(SITE_CONFIG + f"{knob} = execute@cluster.example.org\n")

    assert authorized(param[knob], "execute@cluster.example.org")
    assert authorized(param[knob], f"annex@{TRUST_DOMAIN}")


def test_the_annex_token_can_authenticate_at_the_seed(load):
    param = load()

    methods = {m.strip().upper() for m in param["SEC_DEFAULT_AUTHENTICATION_METHODS"].split(",")}
    assert "IDTOKENS" in methods
