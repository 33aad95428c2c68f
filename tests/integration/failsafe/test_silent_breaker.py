"""idle-reap's circuit breaker: a fleet going silent at once is held (and alarmed), a single silent
instance is still reaped, and the held ones are reaped once the hold is over."""

from __future__ import annotations

from datetime import timedelta

from annex.failsafe.idle_reap import run_idle_reap

MINUTE = timedelta(minutes=1)


def reap(fleet, at):
    s = fleet.reap_settings
    return run_idle_reap(fleet.store, fleet.ec2, now=at, timing=s, retention=s.retention, breaker=s)


def all_report(fleet, annex, ids, at):
    for i in ids:
        fleet.heartbeat(annex, i, at=at, claimed=1)


def test_a_fleet_going_silent_at_once_is_held_then_reaped_when_the_hold_ends(fleet):
    s = fleet.reap_settings
    n = s.silent_hold_min
    annex, ids = fleet.annex(count=n)
    last = fleet.t0 + MINUTE
    all_report(fleet, annex, ids, last)
    silent_at = fleet.silent_at(last)  # every one of them misses its deadline in this run

    report = reap(fleet, silent_at)

    assert report.ok
    assert report.terminated == {}
    assert report.details["silent_held"] == n
    assert fleet.running(ids) == set(ids)
    # Still held a minute before the hold ends; reaped (all of them) once it has.
    assert reap(fleet, silent_at + s.silent_hold - MINUTE).terminated == {}
    assert fleet.running(ids) == set(ids)
    report = reap(fleet, silent_at + s.silent_hold)
    assert report.terminated == {"silent": n}
    assert "silent_held" not in report.details
    assert fleet.running(ids) == set()


def test_a_single_silent_instance_is_reaped_at_once(fleet):
    s = fleet.reap_settings
    annex, ids = fleet.annex(count=s.silent_hold_min)
    _quiet, *talkers = ids
    last = fleet.t0 + MINUTE
    all_report(fleet, annex, ids, last)
    at = last
    while at < fleet.silent_at(last):
        at += MINUTE
        all_report(fleet, annex, talkers, at)
    report = reap(fleet, fleet.silent_at(last))
    assert report.terminated == {"silent": 1}
    assert "silent_held" not in report.details
    assert fleet.running(ids) == set(talkers)


def test_a_silent_fleet_below_the_share_of_the_stack_is_reaped(fleet):
    s = fleet.reap_settings
    n = s.silent_hold_min
    annex, ids = fleet.annex(count=n)
    fleet.annex(count=int(n / s.silent_hold_share) + 1, launch=False)  # more live units elsewhere
    last = fleet.t0 + MINUTE
    all_report(fleet, annex, ids, last)
    report = reap(fleet, fleet.silent_at(last))
    assert report.terminated == {"silent": n}
