"""The sweeps follow a live change: a shortened lease ends at its new time, and a shorter idle timeout
reaps an idle instance sooner (learned at its next heartbeat)."""

from __future__ import annotations

from datetime import timedelta

from annex.api.service import AnnexService
from annex.core.auth import Caller
from annex.core.config import RequestSettings
from annex.core.models import IdleTimeoutRequest, ShortenRequest
from annex.failsafe.idle_reap import run_idle_reap
from annex.failsafe.lease_check import run_lease_check

from tests.integration.conftest import ALICE
from tests.integration.failsafe.conftest import function_env

MINUTE = timedelta(minutes=1)


def service(fleet):
    return AnnexService(
        fleet.store, lambda: fleet.ec2, RequestSettings.from_env(function_env("RequestFunction"))
    )


def alice():
    return Caller(arn=ALICE, owner=ALICE, is_admin=False)


def test_a_shortened_lease_ends_at_its_new_time(fleet):
    annex, ids = fleet.annex(count=2, lease=timedelta(hours=4))
    new = service(fleet).shorten(alice(), annex.id, ShortenRequest(to="30m"), now=fleet.t0).lease_expires_at
    s = fleet.lease_settings
    run_lease_check(fleet.store, fleet.ec2, now=new - MINUTE, retention=s.retention)
    assert fleet.running(ids) == set(ids)
    run_lease_check(fleet.store, fleet.ec2, now=new, retention=s.retention)
    assert fleet.running(ids) == set()
    assert fleet.store.get_annex(annex.id).state == "ended"


def test_a_shorter_idle_timeout_reaps_an_idle_instance_sooner(fleet):
    annex, (idle,) = fleet.annex(count=1, idle=timedelta(hours=1))
    s = fleet.reap_settings
    at = fleet.t0 + MINUTE
    fleet.heartbeat(annex, idle, at=at, claimed=0)  # idle from here
    service(fleet).set_idle_timeout(alice(), annex.id, IdleTimeoutRequest(idle_timeout="10m"), now=at)
    while at < fleet.t0 + timedelta(minutes=11):
        at += MINUTE
        answer = fleet.heartbeat(annex, idle, at=at, claimed=0)
        run_idle_reap(fleet.store, fleet.ec2, now=at, timing=s, retention=s.retention)
    assert answer.action == "drain"
    assert fleet.running([idle]) == set()
    assert fleet.instance(annex.id, idle).instance.end_reason == "idle"
