"""`annex-heartbeat spot-watch` in the sandbox, against a stub IMDS: a spot interruption notice vacates
the jobs at once and is reported; a rebalance recommendation is reported; no notice or a malformed one
changes nothing."""

from __future__ import annotations

import json

import pytest
from annex.core.models import HeartbeatRequest

from tests.unit.agent_sandbox import HOSTNAME, Sandbox, partitionable

NOTICE = {"action": "terminate", "time": "2026-12-03T11:02:00Z"}


@pytest.fixture
def sandbox(tmp_path):
    box = Sandbox(tmp_path)
    box.slots(partitionable(4, [("Claimed", 1)] * 4))
    yield box
    box.close()


def watch(box: Sandbox, polls: int = 2):
    return box.run("spot-watch", ANNEX_SPOT_POLLS=str(polls))


def drains(box: Sandbox) -> list[list[str]]:
    return [c[1:] for c in box.condor_calls() if c[0] == "condor_drain"]


def test_no_notice_changes_nothing_and_polls_every_five_seconds(sandbox):
    result = watch(sandbox, polls=3)

    assert result.returncode == 0, result.stderr
    assert drains(sandbox) == []
    assert sandbox.heartbeats() == []
    assert sandbox.slept() == [5, 5]


def test_an_interruption_notice_vacates_the_jobs_and_is_reported_once(sandbox):
    (sandbox.http / "spot-instance-action").write_text(json.dumps(NOTICE))

    result = watch(sandbox, polls=3)

    assert result.returncode == 0, result.stderr
    assert drains(sandbox) == [
        ["-quick", "-reason", "annex: spot interruption (terminate 2026-12-03T11:02:00Z)", HOSTNAME]
    ]
    assert sandbox.machine_state()["drain_how"] == "quick"  # MaxVacateTime, no retirement
    [beat] = sandbox.heartbeats()
    body = HeartbeatRequest.model_validate(beat)
    assert body.spot_notice == "interruption"
    assert (body.claimed_slots, body.total_slots) == (4, 4)


def test_an_interruption_during_a_graceful_drain_turns_it_quick(sandbox):
    sandbox.answers([[200, {"action": "drain", "reason": "lease"}]])
    assert sandbox.run(ANNEX_JITTER_SECONDS="0").returncode == 0
    (sandbox.http / "spot-instance-action").write_text(json.dumps(NOTICE))

    watch(sandbox, polls=1)

    assert [d[0] for d in drains(sandbox)] == ["-graceful", "-cancel", "-quick"]
    assert sandbox.machine_state()["draining"] is True


def test_a_malformed_notice_is_ignored(sandbox):
    (sandbox.http / "spot-instance-action").write_text("<html>not a notice</html>")

    result = watch(sandbox, polls=1)

    assert drains(sandbox) == []
    assert sandbox.heartbeats() == []
    assert "unreadable spot notice" in result.stderr


def test_a_rebalance_recommendation_is_reported_once_without_draining(sandbox):
    (sandbox.http / "rebalance").write_text(json.dumps({"noticeTime": "2026-12-03T11:00:00Z"}))

    watch(sandbox, polls=3)

    assert drains(sandbox) == []
    assert [HeartbeatRequest.model_validate(b).spot_notice for b in sandbox.heartbeats()] == ["rebalance"]


def test_after_an_interruption_a_run_answer_does_not_undo_the_vacate(sandbox):
    (sandbox.http / "spot-instance-action").write_text(json.dumps(NOTICE))
    watch(sandbox, polls=1)
    sandbox.answers([[200, {"action": "run"}]])

    assert sandbox.run(ANNEX_JITTER_SECONDS="0").returncode == 0

    assert [d[0] for d in drains(sandbox)] == ["-quick"]
    assert sandbox.machine_state()["draining"] is True
