"""What the stack's custom metrics cost, measured by running the real handlers: each custom metric (name
x dimension set) is billed $0.30 a month for every hour it is sent, so an idle stack must send as few as
possible, and every alarm on a custom metric must watch exactly a metric the code sends (an alarm on a
dimension set nobody emits never fires, and nobody notices)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from annex_local.template import condition_holds, load_template

from tests.integration.failsafe.conftest import load_event
from tests.integration.failsafe.test_money import launched, request


def emitted(out: str) -> set[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """(namespace, metric, dimensions) of every EMF blob in a function's output."""
    found = set()
    for line in out.splitlines():
        try:
            blob = json.loads(line)
        except ValueError:
            continue
        if not isinstance(blob, dict) or "_aws" not in blob:
            continue
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for dims in directive["Dimensions"]:
                key = tuple(sorted((d, str(blob[d])) for d in dims))
                found |= {(directive["Namespace"], m["Name"], key) for m in directive["Metrics"]}
    return found


def custom_metric_alarms() -> dict[str, tuple[str, str, tuple[tuple[str, str], ...]]]:
    """Every alarm of the default deployment on a metric in the stack's own namespace."""
    tpl = load_template()
    out = {}
    for name, r in tpl["Resources"].items():
        if r["Type"] != "AWS::CloudWatch::Alarm":
            continue
        if "Condition" in r and not condition_holds(r["Condition"]):
            continue
        p = r["Properties"]
        if (
            p.get("Namespace")
            == tpl["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
        ):
            dims = tuple(sorted((d["Name"], str(d["Value"])) for d in p.get("Dimensions", [])))
            out[name] = (p["Namespace"], p["MetricName"], dims)
    return out


SUCCESS = ("Annex", "SweepSucceeded", (("service", "annex"),))


def test_an_idle_stacks_sweeps_send_one_custom_metric(fleet, lease_check_fn, idle_reap_fn, capsys):
    # Given a stack with nothing live, when both minute sweeps run
    capsys.readouterr()
    at = fleet.t0 + timedelta(minutes=1)
    lease_check_fn(load_event("lease-check-schedule"), at=at)
    idle_reap_fn(load_event("idle-reap-schedule"), at=at)

    # Then the only custom metric an idle stack pays for is the sweeps' success beat
    assert emitted(capsys.readouterr().out) == {SUCCESS}


def test_every_alarm_on_a_custom_metric_watches_what_the_code_sends(api, fleet, lease_check_fn, capsys):
    # Given a live annex (so the money figures are sent), when the lease-check runs
    _, annex = request(api, {"name": "m1", "count": 2})
    launched(fleet, annex["id"], 2, at=fleet.t0)
    capsys.readouterr()
    lease_check_fn(load_event("lease-check-schedule"), at=fleet.t0 + timedelta(minutes=1))
    sent = emitted(capsys.readouterr().out)

    # Then the sweep beat, the live instances and the spend rate are each exactly what an alarm watches
    alarms = custom_metric_alarms()
    for alarm in ("SweepsStalledAlarm", "LiveInstancesAlarm", "SpendRateAlarm"):
        assert alarms[alarm] in sent, (alarm, alarms[alarm], sent)


def test_the_breakers_alarm_watches_what_idle_reap_sends_when_it_holds(
    fleet, idle_reap_fn, capsys, monkeypatch
):
    from annex.failsafe import sweeps

    # Given an idle-reap run whose breaker held terminations (the breaker's own tests make it hold)
    report: dict[str, Any] = {}
    original = sweeps.publish_metrics

    def holding(metrics, rep):
        rep.details["silent_held"] = 7
        report["held"] = rep.details["silent_held"]
        original(metrics, rep)

    monkeypatch.setattr(sweeps, "publish_metrics", holding)
    capsys.readouterr()
    idle_reap_fn(load_event("idle-reap-schedule"), at=fleet.t0 + timedelta(minutes=1))
    sent = emitted(capsys.readouterr().out)

    assert report == {"held": 7}
    assert custom_metric_alarms()["SilentTerminationsHeldAlarm"] in sent
