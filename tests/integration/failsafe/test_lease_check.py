"""lease-check: every lease is enforced by the cloud within one sweep, and nothing runs unaccounted for."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from annex.core.clock import to_iso
from annex.core.models import AnnexState, EndReason
from annex.failsafe.lease_check import run_lease_check
from annex.failsafe.lease_tag import keep_lease_tag
from annex.failsafe.sweeps import SweepFailed

from tests.integration.conftest import BOB, run_tagged_instances
from tests.integration.failsafe.conftest import Killed, load_event


def sweep(fleet, at):
    return run_lease_check(fleet.store, fleet.ec2, now=at, retention=fleet.lease_settings.retention)


def instance_states(fleet, annex_id):
    return {i.instance_id: i.state.value for i in fleet.store.list_instances(annex_id)}


def test_lease_expiry_terminates_within_one_sweep(fleet):
    annex, ids = fleet.annex(count=3, lease=timedelta(hours=1))
    _other, other_ids = fleet.annex(count=2, lease=timedelta(hours=2))
    expiry = annex.lease_expires_at

    early = sweep(fleet, expiry - timedelta(seconds=1))
    assert early.due == 0
    assert fleet.running(ids) == set(ids)

    report = sweep(fleet, expiry)

    assert report.ok
    assert report.due == 1
    assert report.terminated == {"lease-expired": 3}
    assert fleet.running(ids) == set()
    assert fleet.running(other_ids) == set(other_ids)
    ended = fleet.store.get_detail(annex.id)
    assert ended.state is AnnexState.ENDED
    assert ended.end_reason is EndReason.LEASE_EXPIRED
    assert ("ended", "the lease expired") in [(h.action, h.detail) for h in ended.history]
    assert set(instance_states(fleet, annex.id).values()) == {"terminated"}
    assert fleet.quota() == 2  # the other annex's two instances
    assert fleet.store.sweep_status("lease-check") == to_iso(expiry)


def test_extend_prevents_it(fleet, api):
    annex, ids = fleet.annex(count=2, lease=timedelta(hours=1))

    status, body = api.call("POST", f"/annexes/{annex.id}/extend", body={"by": "1h"})
    assert status == 200, body
    report = sweep(fleet, annex.lease_expires_at + timedelta(minutes=1))

    assert report.due == 0
    assert fleet.running(ids) == set(ids)
    assert fleet.store.get_annex(annex.id).state is AnnexState.RUNNING

    later = sweep(fleet, annex.lease_expires_at + timedelta(hours=1))
    assert later.terminated == {"lease-expired": 2}
    assert fleet.running(ids) == set()


def test_an_extension_racing_the_index_wins(fleet, monkeypatch):
    """The `due` index is eventually consistent: the lease-check re-reads the record before ending it."""
    annex, ids = fleet.annex(count=2, lease=timedelta(hours=1))
    # What the API's extend does: the record, then the lease tag.
    extended = fleet.store.extend_lease(
        annex, annex.lease_expires_at + timedelta(hours=1), actor="alice", now=fleet.t0, note="+1h"
    )
    keep_lease_tag(fleet.ec2, extended)
    # The index still lists it as due at its old expiry (it lags the extension).
    monkeypatch.setattr(fleet.store, "due_leases", lambda now, limit=1000: iter([annex.id]))

    report = sweep(fleet, annex.lease_expires_at + timedelta(minutes=1))

    assert report.ok
    assert report.skipped == 1
    assert fleet.store.get_annex(annex.id).state is AnnexState.RUNNING
    assert fleet.running(ids) == set(ids)


def test_annexes_stuck_before_running_end_at_their_lease(fleet):
    requested, _ = fleet.annex(count=2, lease=timedelta(minutes=30), state=AnnexState.REQUESTED, launch=False)
    # A launch interrupted after RunInstances: instances tagged, not yet recorded.
    launching, ids = fleet.annex(
        count=2, lease=timedelta(minutes=30), state=AnnexState.LAUNCHING, record=False
    )

    report = sweep(fleet, fleet.t0 + timedelta(minutes=30))

    assert report.ok
    assert report.due == 2
    for annex in (requested, launching):
        ended = fleet.store.get_annex(annex.id)
        assert (ended.state, ended.end_reason) == (AnnexState.ENDED, EndReason.LEASE_EXPIRED)
    assert fleet.running(ids) == set()
    assert fleet.quota() == 0


def test_an_orphan_with_no_record_is_terminated(fleet, ec2):
    orphans = run_tagged_instances(ec2, "ax-00000000000000aa", 2)  # tagged by this stack, no record
    untagged_annex = run_tagged_instances(ec2, "", 1)  # annex:id tag empty
    other_stack = run_tagged_instances(ec2, "ax-00000000000000bb", 1, stack="someone-else")
    _annex, ids = fleet.annex(count=1)

    report = sweep(fleet, fleet.t0 + timedelta(minutes=1))

    assert report.ok
    assert report.terminated == {"orphan": 3}
    assert fleet.running(orphans + untagged_annex) == set()
    assert fleet.running(other_stack) == set(other_stack)
    assert fleet.running(ids) == set(ids)


def test_an_instance_whose_lease_tag_passed_is_terminated_though_its_record_is_live(fleet):
    annex, ids = fleet.annex(count=3, lease=timedelta(hours=4))
    stale = ids[0]
    fleet.ec2_client.create_tags(
        Resources=[stale],
        Tags=[{"Key": "annex:lease-expires", "Value": to_iso(fleet.t0 + timedelta(minutes=10))}],
    )

    not_yet = sweep(fleet, fleet.t0 + timedelta(minutes=9))
    assert fleet.running([stale]) == {stale}
    report = sweep(fleet, fleet.t0 + timedelta(minutes=10))

    assert not_yet.ok
    assert report.ok
    assert report.terminated == {"lease-expired": 1}
    assert fleet.running(ids) == set(ids[1:])
    assert fleet.instance(annex.id, stale).instance.state == "terminated"
    assert fleet.instance(annex.id, stale).instance.end_reason == "lease-expired"
    # one quota unit came back, once
    assert (fleet.quota(), fleet.held(annex.id)) == (2, 2)
    sweep(fleet, fleet.t0 + timedelta(minutes=11))
    assert (fleet.quota(), fleet.held(annex.id)) == (2, 2)


@pytest.mark.parametrize("tag", ["", "next tuesday", "2026-13-45T99:00:00Z"])
def test_a_missing_or_mangled_lease_tag_counts_as_passed(fleet, tag):
    _annex, ids = fleet.annex(count=1, lease=timedelta(hours=4))
    if tag:
        fleet.ec2_client.create_tags(Resources=ids, Tags=[{"Key": "annex:lease-expires", "Value": tag}])
    else:
        fleet.ec2_client.delete_tags(Resources=ids, Tags=[{"Key": "annex:lease-expires"}])

    report = sweep(fleet, fleet.t0 + timedelta(minutes=1))

    assert report.terminated == {"lease-expired": 1}
    assert fleet.running(ids) == set()


def test_instances_left_running_by_an_ended_annex_are_terminated_and_recorded(fleet):
    annex, ids = fleet.annex(count=2)
    # A stop that crashed after ending the record, before TerminateInstances.
    fleet.store.end_annex(
        annex.id, reason=EndReason.STOPPED, now=fleet.t0, actor="alice", retention=timedelta(days=30)
    )
    assert fleet.quota() == 0

    report = sweep(fleet, fleet.t0 + timedelta(minutes=1))

    assert report.ok
    assert report.terminated == {"stopped": 2}
    assert fleet.running(ids) == set()
    assert instance_states(fleet, annex.id) == dict.fromkeys(ids, "terminated")
    assert fleet.quota() == 0  # end_annex gave everything back; nothing is given back twice


@pytest.mark.parametrize(
    ("service", "operation", "nth"),
    [
        ("dynamodb", "TransactWriteItems", 2),  # after ending the first annex, before the second
        ("ec2", "TerminateInstances", 1),  # every annex ended, no instance terminated yet
        ("dynamodb", "UpdateItem", 3),  # instance records half marked, nothing terminated yet
    ],
)
def test_a_sweep_killed_midway_is_finished_by_the_next(fleet, ddb, ec2, kill_on, service, operation, nth):
    fleet.annex(count=1, lease=timedelta(hours=4), owner=BOB)  # a bystander
    due = [fleet.annex(count=2, lease=timedelta(hours=1)) for _ in range(3)]
    ids = [i for _annex, annex_ids in due for i in annex_ids]
    at = fleet.t0 + timedelta(hours=1)
    kill_on(ddb if service == "dynamodb" else ec2, service, operation, nth=nth)

    with pytest.raises(Killed):
        sweep(fleet, at)
    assert fleet.store.sweep_status("lease-check") is None

    report = sweep(fleet, at + timedelta(minutes=1))

    assert report.ok
    assert fleet.running(ids) == set()
    for annex, annex_ids in due:
        ended = fleet.store.get_annex(annex.id)
        assert (ended.state, ended.end_reason) == (AnnexState.ENDED, EndReason.LEASE_EXPIRED)
        assert instance_states(fleet, annex.id) == dict.fromkeys(annex_ids, "terminated")
    assert fleet.quota() == 0  # every unit back exactly once (never negative)
    assert fleet.quota(BOB) == 1
    assert fleet.store.sweep_status("lease-check") == to_iso(at + timedelta(minutes=1))


def test_one_failing_annex_does_not_keep_the_others_running(fleet, monkeypatch):
    bad, bad_ids = fleet.annex(count=1, lease=timedelta(hours=1))
    _good, good_ids = fleet.annex(count=2, lease=timedelta(hours=1))
    real_end = fleet.store.end_annex

    def end_annex(annex_id, **kwargs):
        if annex_id == bad.id:
            raise RuntimeError("DynamoDB had a bad moment")
        return real_end(annex_id, **kwargs)

    monkeypatch.setattr(fleet.store, "end_annex", end_annex)
    at = fleet.t0 + timedelta(hours=1)

    report = sweep(fleet, at)

    assert not report.ok
    assert any(bad.id in f for f in report.failures)
    assert fleet.running(good_ids) == set()
    assert fleet.store.sweep_status("lease-check") is None  # not a success: the alarm will know
    with pytest.raises(SweepFailed):
        report.raise_if_failed()

    monkeypatch.undo()
    assert sweep(fleet, at + timedelta(minutes=1)).ok
    assert fleet.running(bad_ids) == set()


def test_the_scheduled_handler_records_its_success_for_health(fleet, lease_check_fn, api, capsys):
    _annex, ids = fleet.annex(count=2, lease=timedelta(hours=1))
    at = fleet.t0 + timedelta(hours=1)

    summary = lease_check_fn(load_event("lease-check-schedule"), at=at)

    assert summary["ok"] is True
    assert summary["terminated"] == {"lease-expired": 2}
    assert fleet.running(ids) == set()
    status, health = api.call("GET", "/health")
    assert status == 200
    assert {"name": "lease-check", "last_success_at": to_iso(at)} in health["sweeps"]
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    succeeded = [b for b in blobs if "SweepSucceeded" in b]
    assert len(succeeded) == 1
    # one beat for SweepsStalledAlarm, which counts both sweeps' runs (no sweep dimension: one metric)
    assert succeeded[0]["service"] == "annex"
    assert succeeded[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    terminated = [b for b in blobs if "InstancesTerminated" in b]
    assert [(b["reason"], b["InstancesTerminated"]) for b in terminated] == [("lease-expired", [2.0])]


def test_the_handler_fails_loudly_when_the_sweep_fails(fleet, lease_check_fn, monkeypatch):
    _annex, _ = fleet.annex(count=1, lease=timedelta(hours=1))
    module = lease_check_fn.module

    def broken_end(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(module.deps().store, "end_annex", broken_end)

    with pytest.raises(SweepFailed):
        lease_check_fn(load_event("lease-check-schedule"), at=fleet.t0 + timedelta(hours=1))
    assert fleet.store.sweep_status("lease-check") is None
