"""When an instance is idle or silent, with the clock passed in."""

from __future__ import annotations

from datetime import timedelta

import pytest
from annex.core.config import ReapTiming
from annex.core.models import EndReason, InstanceState
from annex.failsafe.rules import decide, idle_since_after_report, needs_refresh, next_check, refresh_interval

from tests.unit.builders import T0, make_instance

TIMING = ReapTiming.from_env({"BOOT_GRACE": "15m", "HEARTBEAT_LOSS_GRACE": "5m"})
IDLE = timedelta(minutes=20)
M = timedelta(minutes=1)
S = timedelta(seconds=1)
instance = make_instance


def test_never_heard_from_is_silent_at_the_boot_grace():
    quiet = instance(state=InstanceState.PENDING)

    assert decide(quiet, IDLE, TIMING, T0 + 15 * M - timedelta(seconds=1)).reason is None
    verdict = decide(quiet, IDLE, TIMING, T0 + 15 * M)

    assert verdict.reason is EndReason.SILENT
    assert "never heard from within 15m" in verdict.detail


def test_a_lost_heartbeat_is_silent_at_the_loss_grace_plus_the_refresh_interval():
    # The stored last-seen time lags the last report by less than R (grace/2 = 2m30s), so an instance
    # stored as heard at 3m counts as silent at 3m + 5m + 2m30s, never before 5m after its last report.
    lost = instance(last_heartbeat_at=T0 + 3 * M, claimed_slots=2, total_slots=4)
    silent_at = T0 + 10 * M + 30 * S

    assert decide(lost, IDLE, TIMING, silent_at - S).reason is None
    verdict = decide(lost, IDLE, TIMING, silent_at)
    assert verdict.reason is EndReason.SILENT
    assert "grace 5m" in verdict.detail


def test_the_refresh_interval_is_half_the_loss_grace():
    assert refresh_interval(TIMING) == 2 * M + 30 * S
    fast = ReapTiming.from_env({"BOOT_GRACE": "45s", "HEARTBEAT_LOSS_GRACE": "30s"})
    assert refresh_interval(fast) == 15 * S


def test_a_report_refreshes_the_stored_time_once_it_is_the_refresh_interval_old():
    heard = T0 + 3 * M
    assert not needs_refresh(heard, now=heard + 2 * M + 29 * S, timing=TIMING)
    assert needs_refresh(heard, now=heard + 2 * M + 30 * S, timing=TIMING)


def test_idle_longer_than_the_timeout_is_idle():
    idle = instance(last_heartbeat_at=T0 + 30 * M, claimed_slots=0, total_slots=4, idle_since=T0 + 11 * M)

    assert decide(idle, IDLE, TIMING, T0 + 31 * M - timedelta(seconds=1)).reason is None
    verdict = decide(idle, IDLE, TIMING, T0 + 31 * M)

    assert verdict.reason is EndReason.IDLE
    assert "idle timeout 20m" in verdict.detail


def test_a_busy_instance_is_never_idle_however_long_it_runs():
    busy = instance(last_heartbeat_at=T0 + 600 * M, claimed_slots=1, total_slots=4)

    verdict = decide(busy, IDLE, TIMING, T0 + 602 * M)

    assert verdict.reason is None
    assert verdict.next_check == T0 + 607 * M + 30 * S


def test_the_deadline_that_passed_first_names_the_reason():
    # idle since 10m, last heard at 29m: idle deadline 30m, silence deadline 36m30s
    both = instance(last_heartbeat_at=T0 + 29 * M, claimed_slots=0, total_slots=4, idle_since=T0 + 10 * M)
    assert decide(both, IDLE, TIMING, T0 + 40 * M).reason is EndReason.IDLE
    # idle since 20m, last heard at 21m: silence deadline 28m30s comes before the idle one (40m)
    lost = instance(last_heartbeat_at=T0 + 21 * M, claimed_slots=0, total_slots=4, idle_since=T0 + 20 * M)
    assert decide(lost, IDLE, TIMING, T0 + 45 * M).reason is EndReason.SILENT


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, T0 + 15 * M),  # boot grace
        # last heard at 2m: silent at 2m + grace 5m + R 2m30s
        ({"last_heartbeat_at": T0 + 2 * M, "claimed_slots": 1, "total_slots": 1}, T0 + 9 * M + 30 * S),
        (
            {
                "last_heartbeat_at": T0 + 2 * M,
                "claimed_slots": 0,
                "total_slots": 1,
                "idle_since": T0 - 17 * M,
            },
            T0 + 3 * M,  # the idle deadline is earlier than the silence deadline
        ),
    ],
)
def test_next_check_is_the_earlier_deadline(kw, expected):
    assert next_check(instance(**kw), IDLE, TIMING) == expected


def test_idle_since_is_kept_while_idle_and_cleared_by_a_claim():
    assert idle_since_after_report(None, 0, T0) == T0
    assert idle_since_after_report(T0, 0, T0 + 5 * M) == T0
    assert idle_since_after_report(T0, 1, T0 + 5 * M) is None
