"""Heartbeats that change nothing write nothing until the stored last-seen time is R old
(`rules.refresh_interval`), and nothing a user relies on moves: a live instance is never reaped as silent,
a silent one goes within grace + R, idle instances go on time, changes are recorded at the report that
carries them, and an extension is answered at the next report."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from annex.core.clock import to_epoch
from annex.core.models import EndReason, HeartbeatAction, HeartbeatRequest, HeartbeatResponse, SpotNotice
from annex.failsafe.heartbeat import HeartbeatService
from annex.failsafe.idle_reap import run_idle_reap
from annex.failsafe.rules import refresh_interval
from annex.store._table import annex_pk, instance_sk  # the layout, to write what the previous release wrote

from tests.integration.failsafe.conftest import instance_arn

MINUTE = timedelta(minutes=1)
S = timedelta(seconds=1)


class Calls:
    """The DynamoDB operations made, by name (a botocore hook on the test's client)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.counts: Counter[str] = Counter()
        client.meta.events.register("before-parameter-build.dynamodb", self._seen)

    def _seen(self, model: Any, **_kwargs: Any) -> None:
        self.counts[model.name] += 1

    def writes(self) -> int:
        return sum(v for k, v in self.counts.items() if k not in ("GetItem", "BatchGetItem", "Query"))

    def close(self) -> None:
        self.client.meta.events.unregister("before-parameter-build.dynamodb", self._seen)


@pytest.fixture
def calls(ddb):
    seen = Calls(ddb)
    yield seen
    seen.close()


def agent_times(start: datetime, until: datetime, seed: int = 13) -> Iterator[datetime]:
    """When the agent's reports arrive: its systemd timer fires every 60 s (+ up to 5 s of timer
    accuracy) and each run sleeps 0-15 s of jitter before it reports (annex-node.sh, annex-heartbeat.sh)."""
    rng = random.Random(seed)
    fired = start
    while True:
        at = fired + timedelta(seconds=rng.randint(0, 15))
        if at >= until:
            return
        yield at
        fired += timedelta(seconds=60 + rng.randint(0, 5))


def report(fleet, annex, instance_id, *, at, claimed, **extra) -> HeartbeatResponse:
    service = HeartbeatService(fleet.store, fleet.heartbeat_settings)
    request = HeartbeatRequest(
        instance_id=instance_id, annex_id=annex.id, claimed_slots=claimed, total_slots=4, **extra
    )
    return service.report(instance_arn(instance_id), request, now=at)


def reap(fleet, at):
    s = fleet.reap_settings
    return run_idle_reap(fleet.store, fleet.ec2, now=at, timing=s, retention=s.retention, breaker=s)


def stored(fleet, annex, instance_id):
    return fleet.instance(annex.id, instance_id).instance


def test_a_steady_instance_is_written_at_most_every_r_and_never_reaped_as_silent(fleet, calls):
    # Given a busy instance whose agent reports on its timer, with jitter, for two hours (three reports
    # in a row lost after the first hour, right after a report that was not written), and idle-reap
    # running every minute
    annex, (iid,) = fleet.annex(count=1, lease=timedelta(hours=4))
    grace = fleet.reap_settings.heartbeat_loss_grace
    r = refresh_interval(fleet.heartbeat_settings)
    start = fleet.t0 + MINUTE
    end = start + timedelta(hours=2)
    reports = list(agent_times(start, end))
    sweeps = [start + k * MINUTE for k in range(1, 121)]
    written_at: list[datetime] = []
    delivered: list[datetime] = []
    lose = 0
    lost = False
    # When the reports and the sweeps run in time order
    for when, what in sorted([(t, "report") for t in reports] + [(t, "reap") for t in sweeps]):
        if what == "reap":
            result = reap(fleet, when)
            # Then no sweep ever finds it silent (or anything else to end)
            assert result.terminated == {}, (when, result.terminated)
            continue
        if lose:
            lose -= 1
            continue
        calls.counts.clear()
        answer = report(fleet, annex, iid, at=when, claimed=2)
        delivered.append(when)
        assert answer.action is HeartbeatAction.RUN
        record = stored(fleet, annex, iid)
        assert record.last_heartbeat_at is not None
        if record.last_heartbeat_at == when:
            written_at.append(when)
            assert calls.writes() == 1
        else:
            assert calls.writes() == 0  # skipped: one read, no write
            assert calls.counts["BatchGetItem"] == 1
            # the stored last-seen time lags this report by less than R
            assert when - record.last_heartbeat_at < r
            if not lost and when > start + timedelta(hours=1) and when - record.last_heartbeat_at >= 100 * S:
                lose, lost = 3, True

    # (the loss happened, and left a gap within the loss grace: the instance was alive throughout)
    assert lost
    longest = max(b - a for a, b in itertools.pairwise(delivered))
    assert 3 * MINUTE < longest < grace, longest
    # and the record was written at most every R: from the first report on, each write at least R after
    # the one before (no change forced one in between), a third of the reports or fewer
    assert written_at[0] == reports[0]
    gaps = [b - a for a, b in itertools.pairwise(written_at)]
    assert min(gaps) >= r, min(gaps)
    assert len(written_at) <= len(delivered) // 3 + 1, (len(written_at), len(delivered))
    assert stored(fleet, annex, iid).state == "running"
    assert fleet.running([iid]) == {iid}


def test_an_instance_that_stops_reporting_is_reaped_within_grace_plus_r(fleet):
    # Given an instance that reported steadily for half an hour (most reports not written), then stopped
    annex, (iid,) = fleet.annex(count=1, lease=timedelta(hours=4))
    grace = fleet.reap_settings.heartbeat_loss_grace
    r = refresh_interval(fleet.reap_settings)
    start = fleet.t0 + MINUTE
    reports = list(agent_times(start, start + timedelta(minutes=30), seed=7))
    for at in reports:
        report(fleet, annex, iid, at=at, claimed=1)
    last = reports[-1]
    assert stored(fleet, annex, iid).last_heartbeat_at != last  # its last report was not written

    # When idle-reap runs every minute after that
    at = last.replace(second=0, microsecond=0)
    reaped_at = None
    while reaped_at is None and at < last + grace + r + 2 * MINUTE:
        at += MINUTE
        if reap(fleet, at).terminated == {"silent": 1}:
            reaped_at = at

    # Then it is reaped as silent no sooner than the loss grace after its last report, and no later than
    # grace + R after it (plus the sweep's minute)
    assert reaped_at is not None
    assert last + grace <= reaped_at <= last + grace + r + MINUTE, reaped_at - last
    assert stored(fleet, annex, iid).end_reason == EndReason.SILENT


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"claimed": 3}, lambda rec: rec.claimed_slots == 3),
        ({"claimed": 2, "problem": "condor_master did not start"}, lambda rec: rec.problem is not None),
        ({"claimed": 2, "spot_notice": "rebalance"}, lambda rec: rec.spot_notice is SpotNotice.REBALANCE),
        ({"claimed": 0}, lambda rec: rec.idle_since is not None),
    ],
    ids=["claimed-slots", "problem", "spot-notice", "idle"],
)
def test_a_change_is_written_at_the_report_that_carries_it(fleet, change, check):
    # Given an instance written a minute ago (its next report would write nothing)
    annex, (iid,) = fleet.annex(count=1)
    first = fleet.t0 + MINUTE
    report(fleet, annex, iid, at=first, claimed=2)
    report(fleet, annex, iid, at=first + MINUTE, claimed=2)
    assert stored(fleet, annex, iid).last_heartbeat_at == first  # skipped

    # When the next report carries a change
    at = first + 2 * MINUTE
    extra = {k: v for k, v in change.items() if k != "claimed"}
    report(fleet, annex, iid, at=at, claimed=change["claimed"], **extra)

    # Then it is stored at once, with the report's time
    record = stored(fleet, annex, iid)
    assert check(record)
    assert record.last_heartbeat_at == at


def test_an_idle_instance_still_ends_at_its_idle_timeout(fleet):
    # Given an instance reporting no claimed slot every minute (most reports not written)
    idle = timedelta(minutes=7)
    annex, (iid,) = fleet.annex(count=1, idle=idle)
    start = fleet.t0 + MINUTE
    report(fleet, annex, iid, at=start, claimed=0)  # idle since its first report
    at = start
    reaped_at = None
    while reaped_at is None and at < start + idle + 3 * MINUTE:
        at += MINUTE
        answer = report(fleet, annex, iid, at=at, claimed=0)
        if at < start + idle:
            assert answer.action is HeartbeatAction.RUN
        else:
            assert answer.action is HeartbeatAction.DRAIN  # told at once, as before
        if reap(fleet, at + S).terminated == {"idle": 1}:
            reaped_at = at + S

    # Then idle-reap ends it in the first run at or after idle_since + the idle timeout
    assert reaped_at is not None
    assert start + idle <= reaped_at < start + idle + MINUTE + S


def test_an_extension_is_answered_at_the_next_report_even_when_it_writes_nothing(fleet):
    # Given an instance being told to drain because its lease ends within the drain lead
    lease = timedelta(minutes=30)
    annex, (iid,) = fleet.annex(count=1, lease=lease)
    lead = fleet.heartbeat_settings.drain_lead
    at = fleet.t0 + lease - lead - MINUTE
    assert report(fleet, annex, iid, at=at, claimed=2).action is HeartbeatAction.RUN
    at += MINUTE
    assert report(fleet, annex, iid, at=at, claimed=2).action is HeartbeatAction.DRAIN
    heard = stored(fleet, annex, iid).last_heartbeat_at

    # When the owner extends the lease by an hour
    current = fleet.store.get_annex(annex.id)
    new_expiry = current.lease_expires_at + timedelta(hours=1)
    fleet.store.extend_lease(current, new_expiry, actor="alice", now=at, note="extend")

    # Then the next report, which writes nothing, is answered with the new lease and told to run
    at += MINUTE
    answer = report(fleet, annex, iid, at=at, claimed=2)
    assert stored(fleet, annex, iid).last_heartbeat_at == heard  # nothing written
    assert answer.action is HeartbeatAction.RUN
    assert answer.lease_expires_at == new_expiry


def test_a_report_that_changes_nothing_still_moves_a_due_entry_about_to_come_due(fleet):
    # Given a record written by the previous release (a write per report): last heard a minute ago, its
    # `due` entry kept early, 110 s after that report
    annex, (iid,) = fleet.annex(count=1)
    heard = fleet.t0 + MINUTE
    report(fleet, annex, iid, at=heard, claimed=2)
    early = heard + 110 * S
    fleet.ddb.update_item(
        TableName=fleet.store.table_name,
        Key={"pk": {"S": annex_pk(annex.id)}, "sk": {"S": instance_sk(iid)}},
        UpdateExpression="SET due_at = :d",
        ExpressionAttributeValues={":d": {"N": str(to_epoch(early))}},
    )

    # When it reports, unchanged, a minute later (before R: no refresh is due)
    at = heard + MINUTE
    report(fleet, annex, iid, at=at, claimed=2)

    # Then that report writes, moving the entry to the exact silence deadline, so idle-reap does not meet
    # a live instance when the old time comes
    record = fleet.instance(annex.id, iid)
    assert record.instance.last_heartbeat_at == at
    assert record.due_at is not None
    assert to_epoch(record.due_at) == to_epoch(fleet.silent_at(at))
    result = reap(fleet, early)
    assert (result.due, result.rescheduled, result.terminated) == (0, 0, {})
