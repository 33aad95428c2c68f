"""Lease timers: the lease-check arms an SQS timer for each lease ending within minutes; the timer ends
the annex at its expiry, unless it has been extended; early or duplicate timers change nothing."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta

import boto3
import pytest
from annex.core.models import AnnexState
from annex.failsafe.lease_timer import HORIZON, TimerQueue, arm_due_soon, fire
from botocore.exceptions import ClientError

SECOND = timedelta(seconds=1)


def queue(clock):
    """The lease-timer queue with its sends recorded; `clock` tells the time at each send."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="lease-timers")["QueueUrl"]
    sent: list[dict] = []
    sqs.meta.events.register(
        "provide-client-params.sqs.SendMessageBatch", lambda params, **_: sent.extend(params["Entries"])
    )
    return TimerQueue(sqs, url, clock=clock), sent


class SentAt:
    """The lease-timer queue of a simulated hour: every message with the time it was sent."""

    def __init__(self) -> None:
        self.clock_at: datetime | None = None
        self.timers, sent = queue(clock=lambda: self.clock_at)
        self._entries = sent
        self.log: list[tuple[str, datetime, datetime]] = []  # (annex id, expiry, sent at)

    def run(self, fleet, at: datetime) -> int:
        self.clock_at = at
        before = len(self._entries)
        armed = arm_due_soon(fleet.store, self.timers, now=at)
        for entry in self._entries[before:]:
            body = json.loads(entry["MessageBody"])
            self.log.append((body["annex_id"], datetime.fromisoformat(body["expires_at"]), at))
        return armed

    def per_annex(self) -> Counter[str]:
        return Counter(annex_id for annex_id, _, _ in self.log)


def leases_over_an_hour(fleet, n: int = 15) -> dict[str, datetime]:
    """`n` annexes whose leases end spread over the next hour, at odd seconds (every phase of a minute)."""
    out = {}
    for i in range(n):
        annex, _ = fleet.annex(count=1, lease=timedelta(seconds=20 + i * 233 + i % 7), launch=False)
        out[annex.id] = annex.lease_expires_at
    return out


def test_over_an_hour_of_minute_runs_each_lease_gets_exactly_one_timer_before_it_ends(fleet):
    # Given 15 leases ending over the next hour
    expiries = leases_over_an_hour(fleet)
    sweep = SentAt()

    # When the lease-check runs every minute for an hour (at the minute's 3rd second, as EventBridge may)
    for minute in range(62):
        sweep.run(fleet, fleet.t0 + timedelta(minutes=minute, seconds=3))

    # Then every lease got one timer, sent before its end and with its own expiry
    assert sweep.per_annex() == Counter(dict.fromkeys(expiries, 1))
    for annex_id, expiry, sent_at in sweep.log:
        assert expiry == expiries[annex_id]
        assert sent_at < expiry


@pytest.mark.parametrize(
    "skipped",
    [{5}, {7, 8}, {10, 11}, set(range(20, 60, 3))],
    ids=["one", "two in a row", "two", "every third"],
)
def test_late_and_skipped_runs_still_arm_every_lease_once(fleet, skipped):
    # Given 15 leases over an hour, and runs that come late (up to 50 s into their minute) or not at all
    expiries = leases_over_an_hour(fleet)
    sweep = SentAt()

    for minute in range(62):
        if minute not in skipped:
            sweep.run(fleet, fleet.t0 + timedelta(minutes=minute, seconds=(minute * 37) % 50))

    # Then no lease is left to the backstop, and none is armed twice
    assert sweep.per_annex() == Counter(dict.fromkeys(expiries, 1))
    assert all(sent_at < expiry for _, expiry, sent_at in sweep.log)


def test_a_run_with_nothing_to_arm_writes_nothing(fleet):
    # An idle stack's lease-check reads the mark and leaves it alone (a write a minute is paid for).
    fleet.annex(count=1, lease=timedelta(hours=4), launch=False)
    sweep = SentAt()

    assert sweep.run(fleet, fleet.t0) == 0
    assert fleet.store.timers_armed_through("lease-check") is None


def test_a_window_whose_timers_could_not_be_sent_is_armed_again_by_the_next_run(fleet):
    # Given a lease ending in 100 s and a lease-check whose queue refuses the send
    annex, _ = fleet.annex(count=1, lease=timedelta(minutes=2))
    now = annex.lease_expires_at - timedelta(seconds=100)
    broken = TimerQueue(
        boto3.client("sqs", region_name="us-east-1"), "https://sqs.us-east-1.amazonaws.com/123456789012/gone"
    )
    with pytest.raises(ClientError):
        arm_due_soon(fleet.store, broken, now=now)

    # When the next run, a minute later, can send
    sweep = SentAt()
    sweep.run(fleet, now + timedelta(minutes=1))

    # Then the lease gets its timer (40 s before its end), not only the backstop
    assert [(a, e) for a, e, _ in sweep.log] == [(annex.id, annex.lease_expires_at)]


def fire_at(fleet, annex_id, at):
    return fire(fleet.store, fleet.ec2, [annex_id], now=at, retention=fleet.lease_settings.retention)


def test_the_lease_check_arms_a_timer_for_each_lease_ending_within_the_horizon(fleet):
    soon, _ = fleet.annex(count=1, lease=timedelta(hours=1))
    later, _ = fleet.annex(count=1, lease=timedelta(hours=2))
    now = soon.lease_expires_at - timedelta(seconds=100.5)
    timers, sent = queue(clock=lambda: now)

    armed = arm_due_soon(fleet.store, timers, now=now)

    assert armed == 1
    assert [json.loads(e["MessageBody"])["annex_id"] for e in sent] == [soon.id]
    assert sent[0]["DelaySeconds"] == 101  # rounded up: never before the expiry
    assert arm_due_soon(fleet.store, timers, now=later.lease_expires_at - HORIZON - SECOND) == 0


def test_a_timer_counts_its_delay_from_when_it_is_sent_not_from_when_the_sweep_began(fleet):
    # Given a lease ending 100 s after the lease-check started, and a sweep that took 7.3 s before arming
    soon, _ = fleet.annex(count=1, lease=timedelta(hours=1))
    started = soon.lease_expires_at - timedelta(seconds=100)
    timers, sent = queue(clock=lambda: started + timedelta(seconds=7.3))

    # When the lease-check arms its timers
    arm_due_soon(fleet.store, timers, now=started)

    # Then the message waits until the expiry from the time it was sent (92.7 s, rounded up), not 100 s
    assert [e["DelaySeconds"] for e in sent] == [93]


def test_a_timer_ends_the_annex_at_its_expiry_and_not_a_second_before(fleet):
    annex, ids = fleet.annex(count=2, lease=timedelta(hours=1))
    expiry = annex.lease_expires_at

    early = fire_at(fleet, annex.id, expiry - SECOND)
    assert early.annexes_ended == []
    assert fleet.running(ids) == set(ids)

    result = fire_at(fleet, annex.id, expiry)

    assert result.annexes_ended == [annex.id]
    assert fleet.running(ids) == set()
    assert fleet.store.get_annex(annex.id).state is AnnexState.ENDED
    assert fleet.quota() == 0

    again = fire_at(fleet, annex.id, expiry + SECOND)  # a duplicate message
    assert (again.annexes_ended, again.failures) == ([], {})


def test_an_extension_landing_before_the_timer_wins(fleet):
    annex, ids = fleet.annex(count=1, lease=timedelta(hours=1))
    fleet.store.extend_lease(
        annex, annex.lease_expires_at + timedelta(minutes=30), actor="alice", now=fleet.t0, note="+30m"
    )

    result = fire_at(fleet, annex.id, annex.lease_expires_at + SECOND)

    assert result.annexes_ended == []
    assert fleet.running(ids) == set(ids)
    assert fleet.store.get_annex(annex.id).state is AnnexState.RUNNING


def test_the_deployed_handler_ends_the_annex_and_retries_only_the_message_it_cannot_read(
    fleet, lease_timer_fn
):
    # Given a timer message for a lease that has just passed, and a message that is not a timer
    annex, ids = fleet.annex(count=1, lease=timedelta(hours=1))
    event = {
        "Records": [
            {"messageId": "m-good", "body": json.dumps({"annex_id": annex.id})},
            {"messageId": "m-bad", "body": "not json"},
        ]
    }

    # When the function runs at the expiry
    answer = lease_timer_fn(event, at=annex.lease_expires_at)

    # Then the annex ended, its instance is terminated, and only the unreadable message goes back
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m-bad"}]}
    assert fleet.store.get_annex(annex.id).state is AnnexState.ENDED
    assert fleet.running(ids) == set()
