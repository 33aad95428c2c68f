"""idle-reap: idle and silent instances go, busy ones stay, and each gives its quota unit back once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from annex.core.clock import to_epoch, to_iso
from annex.core.models import AnnexState, EndReason
from annex.failsafe.idle_reap import run_idle_reap
from annex.failsafe.lease_check import run_lease_check
from annex.failsafe.termination import end_annexes
from annex.store import InstanceKey
from annex.store._table import annex_pk, instance_sk  # the layout, to write a state no API makes

from tests.integration.failsafe.conftest import Killed, load_event

MINUTE = timedelta(minutes=1)


def reap(fleet, at):
    s = fleet.reap_settings
    return run_idle_reap(fleet.store, fleet.ec2, now=at, timing=s, retention=s.retention)


def test_an_idle_instance_is_reaped_at_its_idle_timeout_and_a_busy_one_is_not(fleet):
    annex, (idle, busy) = fleet.annex(count=2, idle=timedelta(minutes=20))
    start = fleet.t0 + timedelta(minutes=2)
    at = start
    # Both report every minute; `idle` never has a job, `busy` always has one.
    while at < start + timedelta(minutes=20):
        fleet.heartbeat(annex, idle, at=at, claimed=0)
        fleet.heartbeat(annex, busy, at=at, claimed=4)
        assert reap(fleet, at).terminated == {}
        at += MINUTE
    fleet.heartbeat(annex, idle, at=at, claimed=0)
    fleet.heartbeat(annex, busy, at=at, claimed=4)

    report = reap(fleet, start + timedelta(minutes=20))

    assert report.ok
    assert report.terminated == {"idle": 1}
    assert fleet.running([idle, busy]) == {busy}
    item = fleet.instance(annex.id, idle)
    assert (item.instance.state, item.instance.end_reason) == ("terminated", "idle")
    assert item.due_at is None
    assert (fleet.quota(), fleet.held(annex.id)) == (1, 1)
    history = fleet.store.get_detail(annex.id).history
    assert any(h.action == "instance-terminated" and idle in h.detail for h in history)


def test_a_busy_instance_is_never_reaped_for_idleness_but_the_lease_still_ends_it(fleet):
    annex, (busy,) = fleet.annex(count=1, idle=timedelta(minutes=5), lease=timedelta(hours=1))
    at = fleet.t0 + MINUTE
    while at < annex.lease_expires_at:
        if (at - fleet.t0) % timedelta(minutes=4) == timedelta(0) or at == fleet.t0 + MINUTE:
            fleet.heartbeat(annex, busy, at=at, claimed=1)  # every 4 minutes, within the loss grace
        assert reap(fleet, at).terminated == {}
        at += MINUTE
    assert fleet.running([busy]) == {busy}

    run_lease_check(
        fleet.store, fleet.ec2, now=annex.lease_expires_at, retention=fleet.lease_settings.retention
    )

    assert fleet.running([busy]) == set()
    assert fleet.instance(annex.id, busy).instance.end_reason == "lease-expired"


def test_an_instance_never_heard_from_is_reaped_as_silent_after_the_boot_grace(fleet):
    annex, (quiet, talking) = fleet.annex(count=2)
    grace = fleet.reap_settings.boot_grace
    fleet.heartbeat(annex, talking, at=fleet.t0 + grace - timedelta(minutes=2), claimed=1)

    assert reap(fleet, fleet.t0 + grace - timedelta(seconds=1)).terminated == {}
    report = reap(fleet, fleet.t0 + grace)

    assert report.terminated == {"silent": 1}
    assert fleet.running([quiet, talking]) == {talking}
    assert fleet.instance(annex.id, quiet).instance.end_reason == "silent"


def test_an_instance_that_stops_reporting_is_reaped_as_silent_after_the_loss_grace(fleet):
    annex, (lost,) = fleet.annex(count=1)
    last = fleet.t0 + timedelta(minutes=4)
    fleet.heartbeat(annex, lost, at=last, claimed=2)  # its first report: written
    grace = fleet.reap_settings.heartbeat_loss_grace

    # Never before the loss grace; silent once its stored time is grace + R old
    assert reap(fleet, last + grace).terminated == {}
    assert reap(fleet, fleet.silent_at(last) - timedelta(seconds=1)).terminated == {}
    report = reap(fleet, fleet.silent_at(last))

    assert report.terminated == {"silent": 1}
    assert fleet.running([lost]) == set()


def test_an_instance_due_but_neither_idle_nor_silent_is_rescheduled(fleet):
    annex, (iid,) = fleet.annex(count=1)
    # Launch's reap_at is the boot grace; a heartbeat at the last moment makes it due at the old time
    # in a lagging index, but the record already says later.
    at = fleet.t0 + fleet.reap_settings.boot_grace
    fleet.ddb.update_item(
        TableName=fleet.store.table_name,
        Key={"pk": {"S": annex_pk(annex.id)}, "sk": {"S": instance_sk(iid)}},
        UpdateExpression="SET due_at = :d, last_heartbeat_at = :h, claimed_slots = :c",
        ExpressionAttributeValues={
            ":d": {"N": str(to_epoch(at))},
            ":h": {"S": to_iso(at - MINUTE)},
            ":c": {"N": "2"},
        },
    )

    report = reap(fleet, at)

    assert report.terminated == {}
    assert report.rescheduled == 1
    assert to_epoch(fleet.instance(annex.id, iid).due_at) == to_epoch(fleet.silent_at(at - MINUTE))
    assert fleet.running([iid]) == {iid}


def test_a_heartbeat_that_moved_the_record_since_the_index_was_read_wins(fleet, monkeypatch):
    annex, (iid,) = fleet.annex(count=1)
    at = fleet.t0 + fleet.reap_settings.boot_grace
    fleet.heartbeat(annex, iid, at=at - timedelta(seconds=5), claimed=1)  # just in time
    # The index still lists it as due at `at` (it lags the heartbeat).
    monkeypatch.setattr(
        fleet.store, "due_instances", lambda now, limit=1000: iter([InstanceKey(annex.id, iid)])
    )

    report = reap(fleet, at)

    assert report.ok
    assert report.terminated == {}
    assert fleet.running([iid]) == {iid}


def test_a_heartbeat_landing_between_the_decision_and_the_claim_wins(fleet, monkeypatch):
    annex, (iid,) = fleet.annex(count=1)
    at = fleet.t0 + fleet.reap_settings.boot_grace
    real_claim = fleet.store.claim_for_termination

    def claim_after_a_heartbeat(key, **kwargs):
        fleet.heartbeat(annex, iid, at=at, claimed=1)
        return real_claim(key, **kwargs)

    monkeypatch.setattr(fleet.store, "claim_for_termination", claim_after_a_heartbeat)

    report = reap(fleet, at)

    assert report.terminated == {}
    assert report.skipped == 1
    assert fleet.running([iid]) == {iid}
    assert fleet.instance(annex.id, iid).instance.state == "running"
    assert fleet.quota() == 1


def test_quota_units_come_back_exactly_once(fleet, api):
    annex, (a, b, c) = fleet.annex(count=3)
    at = fleet.t0 + fleet.reap_settings.boot_grace
    fleet.heartbeat(annex, b, at=at - MINUTE, claimed=1)
    fleet.heartbeat(annex, c, at=at - MINUTE, claimed=1)
    assert fleet.quota() == 3

    reap(fleet, at)  # `a` never reported: silent
    reap(fleet, at + MINUTE)  # nothing more to give back
    assert (fleet.quota(), fleet.held(annex.id)) == (2, 2)

    status, body = api.call("POST", f"/annexes/{annex.id}/stop")  # the owner stops the rest
    assert status == 200, body
    reap(fleet, at + timedelta(minutes=30))  # the reaper finds nothing left to release

    assert fleet.quota() == 0
    assert fleet.held(annex.id) == 0
    assert fleet.running([a, b, c]) == set()
    assert {i.end_reason for i in fleet.store.list_instances(annex.id)} == {
        EndReason.SILENT,
        EndReason.STOPPED,
    }


def test_when_the_last_instance_goes_the_annex_ends(fleet):
    annex, _ids = fleet.annex(count=2)

    report = reap(fleet, fleet.t0 + fleet.reap_settings.boot_grace)

    assert report.terminated == {"silent": 2}
    assert report.annexes_ended == 1
    ended = fleet.store.get_annex(annex.id)
    assert (ended.state, ended.end_reason) == (AnnexState.ENDED, EndReason.ALL_INSTANCES_GONE)
    assert fleet.quota() == 0
    # the name is free again
    again, _ = fleet.annex(count=1, launch=False)
    assert again.state is AnnexState.RUNNING


def test_a_launching_annex_is_not_ended_when_its_first_instance_goes(fleet):
    annex, (iid,) = fleet.annex(count=1, state=AnnexState.LAUNCHING)

    reap(fleet, fleet.t0 + fleet.reap_settings.boot_grace)

    assert fleet.running([iid]) == set()
    assert fleet.store.get_annex(annex.id).state is AnnexState.LAUNCHING


@pytest.mark.parametrize(
    ("service", "operation"),
    [
        ("ec2", "TerminateInstances"),  # claimed, not terminated
        ("dynamodb", "TransactWriteItems"),  # terminated, not recorded, quota not back
    ],
)
def test_a_reap_killed_midway_is_finished_by_the_next(fleet, ddb, ec2, kill_on, service, operation):
    annex, ids = fleet.annex(count=3)
    at = fleet.t0 + fleet.reap_settings.boot_grace
    fleet.heartbeat(annex, ids[2], at=at - MINUTE, claimed=1)
    kill_on(ddb if service == "dynamodb" else ec2, service, operation)

    with pytest.raises(Killed):
        reap(fleet, at)
    assert {fleet.instance(annex.id, i).instance.state for i in ids[:2]} == {"terminating"}

    report = reap(fleet, at + MINUTE)

    assert report.ok
    assert fleet.running(ids) == {ids[2]}
    for iid in ids[:2]:
        item = fleet.instance(annex.id, iid)
        assert (item.instance.state, item.instance.end_reason) == ("terminated", "silent")
    assert (fleet.quota(), fleet.held(annex.id)) == (1, 1)
    assert fleet.store.sweep_status("idle-reap") == to_iso(at + MINUTE)


def test_instances_of_an_annex_that_ended_are_terminated_and_marked_without_giving_quota_twice(fleet):
    annex, ids = fleet.annex(count=2)
    fleet.store.end_annex(
        annex.id, reason=EndReason.STOPPED, now=fleet.t0, actor="alice", retention=timedelta(days=30)
    )

    report = reap(fleet, fleet.t0 + fleet.reap_settings.boot_grace)

    assert report.terminated == {"stopped": 2}
    assert fleet.running(ids) == set()
    assert {fleet.instance(annex.id, i).instance.state for i in ids} == {"terminated"}
    assert fleet.quota() == 0


def test_stop_while_a_reap_is_half_done_converges(fleet, ec2, kill_on):
    annex, ids = fleet.annex(count=2)
    at = fleet.t0 + fleet.reap_settings.boot_grace
    kill_on(ec2, "ec2", "TerminateInstances")
    with pytest.raises(Killed):
        reap(fleet, at)  # both claimed (terminating), neither terminated

    end_annexes(
        fleet.store,
        fleet.ec2,
        [annex.id],
        reason=EndReason.STOPPED,
        actor="alice",
        now=at,
        retention=timedelta(days=30),
    )
    reap(fleet, at + MINUTE)

    assert fleet.running(ids) == set()
    assert {fleet.instance(annex.id, i).instance.state for i in ids} == {"terminated"}
    assert fleet.quota() == 0
    assert fleet.held(annex.id) == 0


def test_the_scheduled_handler_reaps_and_records_its_success(fleet, idle_reap_fn, api):
    _annex, ids = fleet.annex(count=1)
    at = fleet.t0 + fleet.reap_settings.boot_grace

    summary = idle_reap_fn(load_event("idle-reap-schedule"), at=at)

    assert summary["ok"] is True
    assert summary["terminated"] == {"silent": 1}
    assert fleet.running(ids) == set()
    status, health = api.call("GET", "/health")
    assert status == 200
    assert {"name": "idle-reap", "last_success_at": to_iso(at)} in health["sweeps"]
