"""What an idle deployment pays for, read from template.yaml: alarms ($0.10 a month each, one per metric
watched), traced minute-schedules (a trace a minute), and the heartbeat path's per-request extras. The
README's "Cost model" (bench/bench_cost.py) counts the same; a new alarm must be worth its $1.20 a year."""

from __future__ import annotations

import pytest
from annex_local.template import condition_holds, load_template

# Every alarm of the default deployment, each watching one metric. What a user needs to hear is here:
# a stalled fail-safe, anything dead-lettered, held silent terminations, live instances, spend rate,
# launches that cannot work (EC2 refusing the configuration, no pool token stored).
ALARMS = {
    "SweepsStalledAlarm",
    "FailsafeDeadLetterAlarm",
    "SilentTerminationsHeldAlarm",
    "LiveInstancesAlarm",
    "SpendRateAlarm",
    "LaunchConfigErrorsAlarm",
    "HeartbeatErrorsAlarm",
    "RequestErrorsAlarm",
    "PricesErrorsAlarm",
    "NoticesErrorsAlarm",
}


@pytest.fixture(scope="module")
def deployed():
    return {
        name: r
        for name, r in load_template()["Resources"].items()
        if "Condition" not in r or condition_holds(r["Condition"])
    }


def test_the_default_deployment_pays_for_these_alarms_each_on_one_metric(deployed):
    alarms = {n: r["Properties"] for n, r in deployed.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert set(alarms) == ALARMS
    for name, alarm in alarms.items():
        assert "Metrics" not in alarm, f"{name}: metric math is billed per metric it reads"
        assert alarm.get("Period", 60) >= 60, f"{name}: high-resolution alarms cost three times as much"
    assert not [n for n, r in deployed.items() if r["Type"] == "AWS::CloudWatch::CompositeAlarm"]


def test_nothing_that_runs_every_minute_is_traced(deployed):
    minute = [
        r["Properties"]
        for r in deployed.values()
        if r["Type"] == "AWS::Serverless::Function"
        and any(
            e["Type"] == "Schedule" and e["Properties"]["Schedule"] == "rate(1 minute)"
            for e in (r["Properties"].get("Events") or {}).values()
        )
    ]
    assert len(minute) == 2
    assert all(p["Tracing"] == "PassThrough" for p in minute)


def test_a_heartbeat_writes_no_platform_log_lines_and_is_not_traced(deployed):
    fn = deployed["HeartbeatFunction"]["Properties"]
    assert fn["Tracing"] == "PassThrough"
    assert fn["LoggingConfig"]["LogFormat"] == "JSON"
    assert fn["LoggingConfig"]["SystemLogLevel"] == "WARN"  # no START/END/REPORT per request
    assert deployed["HeartbeatApi"]["Type"] == "AWS::Serverless::HttpApi"
