"""A node's boot problem: recorded on the instance once, answered `terminate`, reaped as boot-problem."""

from __future__ import annotations

from datetime import timedelta

from annex.core.models import HeartbeatRequest
from annex.failsafe.heartbeat import HeartbeatService
from annex.failsafe.idle_reap import run_idle_reap

from tests.integration.failsafe.conftest import instance_arn

PROBLEM = "the collector refused ADVERTISE_STARTD for annex@cm.example.org"


def report_problem(fleet, annex, instance_id, *, at, problem=PROBLEM):
    service = HeartbeatService(fleet.store, fleet.heartbeat_settings)
    request = HeartbeatRequest(
        instance_id=instance_id, annex_id=annex.id, claimed_slots=0, total_slots=0, problem=problem
    )
    return service.report(instance_arn(instance_id), request, now=at)


def test_a_reported_boot_problem_is_recorded_once_answered_terminate_and_reaped(fleet):
    annex, (broken, healthy) = fleet.annex(count=2)
    at = fleet.t0 + timedelta(minutes=2)
    fleet.heartbeat(annex, healthy, at=at, claimed=1)

    answer = report_problem(fleet, annex, broken, at=at)
    again = report_problem(fleet, annex, broken, at=at + timedelta(seconds=20))

    assert answer.action == "terminate"
    assert PROBLEM in answer.reason
    assert again.action == "terminate"
    assert fleet.instance(annex.id, broken).instance.problem == PROBLEM
    events = [h for h in fleet.store.get_detail(annex.id).history if h.action == "boot-problem"]
    assert [(e.actor, e.detail) for e in events] == [(broken, PROBLEM)]

    s = fleet.reap_settings
    report = run_idle_reap(
        fleet.store, fleet.ec2, now=at + timedelta(minutes=1), timing=s, retention=s.retention
    )
    repeat = run_idle_reap(
        fleet.store, fleet.ec2, now=at + timedelta(minutes=2), timing=s, retention=s.retention
    )

    assert report.terminated == {"boot-problem": 1}
    assert repeat.terminated == {}
    assert fleet.running([broken, healthy]) == {healthy}
    item = fleet.instance(annex.id, broken).instance
    assert (item.state, item.end_reason, item.problem) == ("terminated", "boot-problem", PROBLEM)
    assert (fleet.quota(), fleet.held(annex.id)) == (1, 1)
    shown = {i.instance_id: i.problem for i in fleet.store.get_detail(annex.id).instances}
    assert shown == {broken: PROBLEM, healthy: None}
