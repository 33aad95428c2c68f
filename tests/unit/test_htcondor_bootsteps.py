"""The REAL token-fetching, metadata-lock and authorization steps of the rendered boot script, run in
a sandbox with stub commands (curl, iptables, nft, runuser, condor_ping, systemctl) that accept only
the argument forms the real tools accept."""

from __future__ import annotations

import json
import stat

import pytest

from tests.unit.node_sandbox import POOL_TOKEN, NodeSandbox

IDENTITY = "read_instance_identity && install_agents"


@pytest.fixture
def node(tmp_path) -> NodeSandbox:
    return NodeSandbox(tmp_path)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the pool token ---------------------------------------------------------------------------------


def test_the_token_lands_root_only_and_in_no_output(node):
    # Given an image whose token directory and an old token file are world-readable
    tokens = node.etc / "tokens.d"
    tokens.mkdir(mode=0o755)
    (tokens / "annex-pool").write_text("old\n")
    (tokens / "annex-pool").chmod(0o644)

    result = node.run(f"{IDENTITY} && fetch_pool_token")

    assert result.returncode == 0, result.output
    assert (tokens / "annex-pool").read_text() == POOL_TOKEN + "\n"
    assert mode(tokens / "annex-pool") == 0o600
    assert mode(tokens) == 0o700
    assert POOL_TOKEN not in result.output
    for part in POOL_TOKEN.split("."):
        assert part not in result.output
        assert all(part not in line for line in node.commands())  # nothing logged
    assert (node.root / "var/lib/annex/token-identity").read_text().strip() == "annex@pool.example.org"


def ssm_answers(node) -> list[dict]:
    log = node.dir / "ssm.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_missing_parameter_writes_no_token_and_the_step_fails(node):
    # Given no pool token parameter under the name the stack gave (the administrator has not put it)
    result = node.run(f"{IDENTITY} && fetch_pool_token", FAKE_PARAMETER_NAME="/annex/other-stack/pool-token")

    assert result.returncode != 0
    assert [a["__type"] for a in ssm_answers(node)] == ["ParameterNotFound"]
    assert not (node.etc / "tokens.d" / "annex-pool").exists()


def test_an_empty_value_is_refused_and_no_token_is_written(node):
    result = node.run(f"{IDENTITY} && fetch_pool_token", FAKE_PARAMETER=" ")

    assert result.returncode != 0
    assert "the pool token parameter holds no token" in result.stderr
    assert not (node.etc / "tokens.d" / "annex-pool").exists()


def test_a_throttled_fetch_is_retried_with_growing_jittered_waits_until_it_succeeds(node):
    # Given SSM throttling the first five requests (1,000 instances booting against 40 per second)
    steps = f"{IDENTITY} && DEADLINE=$(( $(date +%s) + 600 )) && retry fetch_pool_token"
    result = node.run(steps, FAKE_SSM_THROTTLE="5")

    assert result.returncode == 0, result.output
    assert [a["__type"] for a in ssm_answers(node)] == ["ThrottlingException"] * 5
    assert (node.etc / "tokens.d" / "annex-pool").read_text() == POOL_TOKEN + "\n"
    waits = [int(line.split()[1]) for line in node.commands("sleep")]
    assert len(waits) == 5
    for wait, delay in zip(waits, (2, 4, 8, 16, 30), strict=True):
        assert delay // 2 <= wait <= delay


def test_the_waits_are_jittered_so_instances_booted_together_spread_out(tmp_path):
    # Given several instances throttled alike, their waits differ (the same wait for all = a herd)
    seen = set()
    for n in range(8):
        node = NodeSandbox(tmp_path / str(n))
        node.run(
            f"{IDENTITY} && DEADLINE=$(( $(date +%s) + 600 )) && retry fetch_pool_token",
            FAKE_SSM_THROTTLE="3",
        )
        seen.add(tuple(int(line.split()[1]) for line in node.commands("sleep")))
    assert len(seen) > 1


# --- the metadata lock fails closed -----------------------------------------------------------------


def test_iptables_locks_the_metadata_service_and_the_lock_is_verified(node):
    node.stub_reporter()

    result = node.run("lock_metadata")

    assert result.returncode == 0, result.output
    assert "instance metadata restricted to root (iptables)" in result.stdout
    assert "verified: an unprivileged user cannot reach the instance metadata service" in result.stdout
    assert not node.powered_off()


def test_without_iptables_nftables_locks_it(node):
    node.without("iptables")
    node.stub_reporter()

    result = node.run("lock_metadata")

    assert result.returncode == 0, result.output
    assert "restricted to root (nftables)" in result.stdout
    assert not node.powered_off()


def test_a_broken_iptables_falls_back_to_nftables(node):
    node.stub_reporter()

    result = node.run("lock_metadata", FAKE_IPTABLES_BROKEN="1")

    assert result.returncode == 0, result.output
    assert "restricted to root (nftables)" in result.stdout


@pytest.mark.parametrize(
    ("missing", "env", "reason"),
    [
        (("iptables", "nft"), {}, "could not restrict the instance metadata service to root"),
        ((), {"FAKE_IPTABLES_BROKEN": "1", "FAKE_NFT_BROKEN": "1"}, "could not restrict the instance"),
        # The firewall said yes, but an unprivileged user still gets through.
        ((), {"FAKE_IPTABLES_NOOP": "1"}, "an unprivileged user can still reach the instance metadata"),
        # No way to test it as another user: not verified is not locked.
        (("runuser",), {}, "could not verify the instance metadata lock"),
    ],
)
def test_when_the_lock_cannot_be_verified_the_node_reports_and_powers_off(node, missing, env, reason):
    node.without(*missing)
    node.stub_reporter()

    result = node.run("lock_metadata", **env)

    assert result.returncode != 0
    assert node.powered_off()
    assert len(node.reported()) == 1
    assert reason in node.reported()[0]


# --- the token's authorization, asked of the collector ------------------------------------------------


def test_the_collector_authorizes_every_level_the_node_needs(node):
    assert node.run(f"{IDENTITY} && fetch_pool_token").returncode == 0

    result = node.run("verify_authorization")

    assert result.returncode == 0, result.output
    asked = [line.rsplit(" ", 1)[1] for line in node.commands("condor_ping")]
    assert asked == ["READ", "ADVERTISE_STARTD", "ADVERTISE_MASTER"]
    assert "verified: the collector authorizes READ, ADVERTISE_STARTD and ADVERTISE_MASTER" in result.stdout


@pytest.mark.parametrize("level", ["ADVERTISE_STARTD", "ADVERTISE_MASTER"])
def test_a_refused_advertise_level_is_reported_with_the_identity_and_the_guide(node, level):
    assert node.run(f"{IDENTITY} && fetch_pool_token").returncode == 0
    node.stub_reporter()

    result = node.run("verify_authorization", FAKE_PING_DENY=level)

    assert result.returncode != 0
    assert node.powered_off()
    assert node.reported() == [
        f"the collector at cm.pool.example.org:9618 refused {level} for annex@pool.example.org — "
        "see the deploy guide (pool/annex-central-manager.conf)"
    ]


def test_an_unreachable_collector_is_reported_as_such(node):
    assert node.run(f"{IDENTITY} && fetch_pool_token").returncode == 0
    node.stub_reporter()

    node.run("verify_authorization", FAKE_PING_DENY="READ ADVERTISE_STARTD ADVERTISE_MASTER")

    assert node.powered_off()
    (reason,) = node.reported()
    assert "refused READ for annex@pool.example.org or could not be reached" in reason


# --- the whole boot, in order -------------------------------------------------------------------------


def boot(node: NodeSandbox, **env: str):
    return node.run(
        "annex_boot",
        ANNEX_ENV_FILE=str(node.root / "etc/annex/annex.env"),
        ANNEX_STATE_DIR=str(node.root / "var/lib/annex"),
        **env,
    )


def test_the_boot_locks_checks_and_only_then_starts_htcondor(node):
    node.add_site_overrides()

    result = boot(node)

    assert result.returncode == 0, result.output
    order = [line.split(" -- ", 1)[-1] if line.startswith("logger") else line for line in node.commands()]

    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(order) if line.startswith(prefix))

    start = first("systemctl restart condor")
    assert first("iptables -A") < start
    assert first("verified: an unprivileged user cannot reach") < start
    assert first("verified: the effective HTCondor configuration") < start
    assert first("condor_ping") < start
    assert "joined the pool at cm.pool.example.org:9618" in result.stdout
    assert not node.powered_off()


def test_a_refused_token_never_starts_htcondor(node):
    result = boot(node, FAKE_PING_DENY="ADVERTISE_MASTER")

    assert result.returncode != 0
    assert node.powered_off()
    assert not node.commands("systemctl restart condor")
    assert "refused ADVERTISE_MASTER for annex@pool.example.org" in result.stdout
