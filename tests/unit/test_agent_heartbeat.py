"""The heartbeat agent (annex-heartbeat.sh), run for real in a sandbox: the real curl against a stub IMDS
and heartbeat endpoint that verifies SigV4, strict fakes of HTCondor 9.0 and 25.x (tests/fakes).
What a user would notice: a busy node reads busy (on every supported HTCondor), drain keeps running
jobs, the instance stops itself at the lease end, heartbeats survive throttling, a boot problem reaches
the control plane."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from annex.core.models import HeartbeatRequest, HeartbeatResponse

from tests.fakes.endpoint import INSTANCE_ARN, SECRET_KEY, SESSION_TOKEN
from tests.unit.agent_sandbox import HOSTNAME, Sandbox, partitionable, static_slots

HTCONDOR_9 = "9.0.19"
HTCONDOR_25 = "25.0.1"
NO_JITTER = {"ANNEX_JITTER_SECONDS": "0"}


@pytest.fixture
def sandbox(tmp_path):
    box = Sandbox(tmp_path)
    yield box
    box.close()


@pytest.fixture
def sandbox9(tmp_path):
    box = Sandbox(tmp_path, version=HTCONDOR_9)
    yield box
    box.close()


def run_answer(lease: datetime | None = None) -> list:
    return [200, HeartbeatResponse(action="run", lease_expires_at=lease).model_dump(mode="json")]


def drain_answer(lease: datetime | None = None, reason: str = "the lease ends soon") -> list:
    body = HeartbeatResponse(action="drain", lease_expires_at=lease, reason=reason)
    return [200, body.model_dump(mode="json")]


def terminate_answer(lease: datetime | None = None) -> list:
    body = HeartbeatResponse(action="terminate", lease_expires_at=lease, reason="the lease ended")
    return [200, body.model_dump(mode="json")]


def epoch_in(seconds: int) -> int:
    return int(time.time()) + seconds


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def reported(box: Sandbox) -> tuple[int, int]:
    beats = box.heartbeats()
    assert len(beats) == 1, beats
    body = HeartbeatRequest.model_validate(beats[0])
    return body.claimed_slots, body.total_slots


# --- slot reporting: "busy 4 of 4" on every supported HTCondor -----------------------------------------


@pytest.mark.parametrize(
    ("version", "slots", "expected"),
    [
        # 25.x default: one partitionable slot; four one-CPU jobs fill the machine.
        (HTCONDOR_25, partitionable(4, [("Claimed", 1)] * 4), (4, 4)),
        # half busy: two jobs, room for two more one-CPU jobs
        (HTCONDOR_25, partitionable(4, [("Claimed", 1), ("Claimed", 1)]), (2, 4)),
        # one job that takes every CPU fills the machine
        (HTCONDOR_25, partitionable(4, [("Claimed", 4)]), (1, 1)),
        # nothing running
        (HTCONDOR_25, partitionable(4, []), (0, 4)),
        # a job being vacated still occupies its slot
        (HTCONDOR_25, partitionable(2, [("Preempting", 1), ("Claimed", 1)]), (2, 2)),
        # 9.0 default: static slots
        (HTCONDOR_9, static_slots(["Claimed", "Unclaimed", "Claimed"]), (2, 3)),
        (HTCONDOR_9, partitionable(8, [("Claimed", 2)] * 3), (3, 5)),
    ],
)
def test_the_heartbeat_counts_slots_as_a_user_reads_them(tmp_path, version, slots, expected):
    box = Sandbox(tmp_path, version=version)
    try:
        box.slots(slots)

        result = box.run(**NO_JITTER)

        assert result.returncode == 0, result.stderr
        assert reported(box) == expected
    finally:
        box.close()


def test_a_busy_node_on_htcondor_25_is_not_reported_idle(sandbox):
    # Given HTCondor 25.x, whose `condor_status -startd` returns the startd's daemon ad (no State)
    sandbox.slots(partitionable(8, [("Claimed", 2)] * 4))

    result = sandbox.run(**NO_JITTER)

    # Then the heartbeat says busy, so idle-reap leaves the machine alone
    assert result.returncode == 0, result.stderr
    assert reported(sandbox) == (4, 4)
    status_calls = [c for c in sandbox.condor_calls() if c[0] == "condor_status"]
    assert status_calls == [
        ["condor_status", "-slots", "-direct", HOSTNAME, "-af", "SlotType", "State", "Cpus"]
    ]


@pytest.mark.parametrize("jobs", [0, 3, 4])
def test_the_local_stacks_simulated_nodes_count_like_the_agent(tmp_path, jobs):
    from annex_local.nodes import CPUS, count_slots

    ads = partitionable(CPUS, [("Claimed", 1)] * jobs)
    box = Sandbox(tmp_path)
    try:
        box.slots(ads)
        assert box.run(**NO_JITTER).returncode == 0
        assert reported(box) == count_slots(ads)
    finally:
        box.close()


def test_a_startd_that_does_not_answer_reports_nothing_claimed_but_still_beats(sandbox):
    sandbox.machine["startd_up"] = False
    sandbox.save_machine()

    result = sandbox.run(**NO_JITTER)

    assert result.returncode == 0, result.stderr
    assert reported(sandbox) == (0, 0)


# --- the heartbeat itself: signed with the role, credentials never on a command line -----------------


def test_heartbeat_is_signed_by_the_instance_role_and_credentials_stay_off_the_command_line(sandbox):
    new_lease = epoch_in(3 * 3600)
    sandbox.answers([run_answer(at(new_lease))])

    result = sandbox.run(**NO_JITTER)

    assert result.returncode == 0, result.stderr
    [request] = sandbox.requests()
    assert request["caller"] == INSTANCE_ARN  # the SigV4 signature verified as the instance's session
    every_argument = " ".join(a for args in sandbox.curl_args() for a in args)
    assert SECRET_KEY not in every_argument
    assert SESSION_TOKEN not in every_argument
    assert sandbox.lease() == new_lease
    assert sandbox.ran("shutdown -P --no-wall +")  # the OS backstop moved with the lease
    assert not sandbox.powered_off()


# --- drain ---------------------------------------------------------------------------------------------


def test_told_to_drain_it_drains_gracefully_once(sandbox):
    sandbox.slots(partitionable(4, [("Claimed", 1)]))
    sandbox.answers([drain_answer(reason="idle past the idle timeout")])

    for _ in range(2):
        assert sandbox.run(**NO_JITTER).returncode == 0

    drains = [c for c in sandbox.condor_calls() if c[0] == "condor_drain"]
    assert drains == [["condor_drain", "-graceful", "-reason", "annex: idle past the idle timeout", HOSTNAME]]
    machine = sandbox.machine_state()
    assert machine["draining"] is True
    assert machine["drain_how"] == "graceful"  # running jobs get MaxJobRetirementTime
    assert not sandbox.powered_off()


def test_an_extension_cancels_the_drain_once(sandbox):
    sandbox.answers([drain_answer(at(epoch_in(200)))])
    assert sandbox.run(**NO_JITTER).returncode == 0
    # When the owner extends and the answer is "run" with the new lease
    sandbox.answers([run_answer(at(epoch_in(7200)))])
    for _ in range(2):
        assert sandbox.run(**NO_JITTER).returncode == 0

    drains = [c[1] for c in sandbox.condor_calls() if c[0] == "condor_drain"]
    assert drains == ["-graceful", "-cancel"]
    assert sandbox.machine_state()["draining"] is False


def test_a_run_answer_inside_the_drain_lead_does_not_undo_the_drain(sandbox):
    lease = epoch_in(200)  # within the 300 s drain lead
    sandbox.answers([run_answer(at(lease))])

    assert sandbox.run(**NO_JITTER).returncode == 0
    assert sandbox.run(**NO_JITTER).returncode == 0

    drains = [c[1] for c in sandbox.condor_calls() if c[0] == "condor_drain"]
    assert drains == ["-graceful"]  # drained on its own, never cancelled
    assert sandbox.machine_state()["draining"] is True


# --- the instance's own lease timer ------------------------------------------------------------------


def test_arm_sets_timers_for_the_drain_the_lease_end_and_the_backstop(sandbox):
    lease = epoch_in(3600)
    sandbox.set_lease(lease)

    assert sandbox.run("arm").returncode == 0

    minutes = int(sandbox.ran("shutdown -P --no-wall +")[0].rsplit("+", 1)[1])
    assert minutes == 70  # the lease plus the ten-minute margin, if this agent never runs again
    timers = {line.split("--unit=")[1].split()[0]: line for line in sandbox.ran("systemd-run")}
    assert set(timers) == {f"annex-drain-ahead-{lease - 300}", f"annex-lease-end-{lease}"}
    timers = {name.rsplit("-", 1)[0]: line for name, line in timers.items()}

    def delay(line: str) -> int:
        return int(line.split("--on-active=")[1].split("s", maxsplit=1)[0])

    assert 3300 - 5 <= delay(timers["annex-drain-ahead"]) <= 3300
    assert 3600 - 5 <= delay(timers["annex-lease-end"]) <= 3600
    assert timers["annex-lease-end"].endswith(" lease-end")


def test_at_the_lease_end_it_powers_off_without_waiting_for_the_margin(sandbox):
    lease = epoch_in(-2)
    sandbox.set_lease(lease)
    sandbox.answers([terminate_answer(at(lease))])

    sandbox.run("lease-end")

    assert sandbox.powered_off()
    assert len(sandbox.heartbeats()) == 1  # it asked once for an extension first


def test_at_the_lease_end_an_answer_without_extension_powers_off(sandbox):
    lease = epoch_in(-1)
    sandbox.set_lease(lease)
    sandbox.answers([drain_answer(at(lease))])

    sandbox.run(**NO_JITTER)

    assert sandbox.powered_off()


def test_at_the_lease_end_an_extension_heard_keeps_it_running(sandbox):
    lease = epoch_in(-1)
    sandbox.set_lease(lease)
    extended = epoch_in(3600)
    sandbox.answers([run_answer(at(extended))])

    result = sandbox.run("lease-end")

    assert result.returncode == 0, result.stderr
    assert not sandbox.powered_off()
    assert sandbox.lease() == extended


def test_a_silent_control_plane_gets_the_margin_then_the_dead_man_switch(sandbox):
    # Given a lease that just ended and a control plane that does not answer
    lease = epoch_in(-30)
    sandbox.set_lease(lease)
    sandbox.answers([[503, {"message": "Service Unavailable"}]])

    sandbox.run(**NO_JITTER, ANNEX_RETRY_BUDGET_SECONDS="3")

    # Then it stops taking jobs but waits: an extension may exist that it has not heard
    assert not sandbox.powered_off()
    assert sandbox.machine_state()["draining"] is True
    # And once the margin has passed, it powers off without asking anyone
    sandbox.set_lease(epoch_in(-601))
    heard = len(sandbox.requests())
    sandbox.run(**NO_JITTER)
    assert sandbox.powered_off()
    assert len(sandbox.requests()) == heard


def test_before_the_lease_end_it_drains_on_its_own(sandbox):
    # Given a control plane that still says "run" (or cannot be reached) within the drain lead
    sandbox.set_lease(epoch_in(120))
    sandbox.answers([[503, {"message": "Service Unavailable"}]])

    sandbox.run(**NO_JITTER, ANNEX_RETRY_BUDGET_SECONDS="2")

    assert sandbox.machine_state()["draining"] is True
    assert not sandbox.powered_off()


def test_master_down_three_times_powers_off(sandbox):
    for run in range(1, 4):
        sandbox.run(**NO_JITTER, FAKE_CONDOR_DOWN="3")
        assert sandbox.powered_off() == (run == 3)


# --- retries and jitter --------------------------------------------------------------------------------


def test_throttled_and_failed_heartbeats_are_retried_with_jitter_within_the_period(sandbox):
    sandbox.answers([[429, {"message": "Too Many Requests"}], [503, {"message": "x"}], drain_answer()])

    result = sandbox.run(**NO_JITTER)

    assert result.returncode == 0, result.stderr
    assert [r["answered"] for r in sandbox.requests()] == [429, 503, 200]
    assert sandbox.machine_state()["draining"] is True  # the last answer was obeyed
    backoff = [s for s in sandbox.slept() if s > 0]
    assert len(backoff) == 2
    assert 1 <= backoff[0] <= 2
    assert 1 <= backoff[1] <= 4


def test_a_refusal_is_not_retried(sandbox):
    sandbox.answers([[403, {"message": "Forbidden"}]])

    result = sandbox.run(**NO_JITTER)

    assert result.returncode != 0
    assert len(sandbox.requests()) == 1
    assert "HTTP 403" in result.stderr


def test_retries_stop_within_the_budget(sandbox):
    sandbox.answers([[500, {"message": "Internal server error"}]])

    result = sandbox.run(**NO_JITTER)

    assert result.returncode != 0
    assert len(sandbox.requests()) >= 3
    assert sum(sandbox.slept()) < 20  # the default budget (sleep is recorded, not slept)
    assert not sandbox.powered_off()


def test_timer_driven_heartbeats_are_spread_by_jitter(sandbox):
    for _ in range(6):
        sandbox.run()

    delays = sandbox.slept()
    assert len(delays) == 6
    assert all(0 <= d <= 15 for d in delays)
    assert len(set(delays)) > 1  # not one synchronized burst


# --- boot problem report ---------------------------------------------------------------------------------


def test_report_problem_sends_one_heartbeat_carrying_the_reason(sandbox):
    reason = "the collector at cm.example.org refused ADVERTISE_STARTD for annex@pool — see the deploy guide"

    result = sandbox.run("--report-problem", reason)

    assert result.returncode == 0, result.stderr
    [beat] = sandbox.heartbeats()
    assert HeartbeatRequest.model_validate(beat).problem == reason
    assert not sandbox.powered_off()  # the boot script powers off itself, after reporting
    assert not [c for c in sandbox.condor_calls() if c[0] == "condor_drain"]


def test_report_problem_is_bounded_to_what_the_api_accepts(sandbox):
    result = sandbox.run("--report-problem", "x" * 1000 + "\t")

    assert result.returncode == 0, result.stderr
    [beat] = sandbox.heartbeats()
    assert HeartbeatRequest.model_validate(beat).problem == "x" * 300


@pytest.mark.parametrize(
    "args", [["--report-problem"], ["--report-problem", ""], ["--report-problem", "a\nb"], ["x"]]
)
def test_bad_arguments_get_the_usage_and_send_nothing(sandbox, args):
    result = sandbox.run(*args)

    assert result.returncode == 2
    assert "usage: annex-heartbeat" in result.stderr
    assert sandbox.requests() == []


def test_problem_field_is_strict_in_the_api_model():
    base = {"instance_id": "i-0123456789abcdef0", "annex_id": "ax-0123456789abcdef", "claimed_slots": 0}
    base["total_slots"] = 0
    assert HeartbeatRequest.model_validate({**base, "problem": "no token"}).problem == "no token"
    for bad in ["", "two\nlines", "x" * 301, 42]:
        with pytest.raises(ValueError, match="problem"):
            HeartbeatRequest.model_validate({**base, "problem": bad})


def test_the_agent_lease_is_never_later_than_the_lease_it_heard(sandbox):
    lease = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    sandbox.answers([run_answer(lease)])

    sandbox.run(**NO_JITTER)

    assert at(sandbox.lease()) == lease
