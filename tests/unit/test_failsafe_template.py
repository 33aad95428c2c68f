"""The fail-safe as template.yaml deploys it: schedules, alarms that match the metrics the code emits,
narrow roles, log groups, and settings that validate against the template's own environment."""

from __future__ import annotations

import json

import pytest
from annex.core.config import HeartbeatSettings, IdleReapSettings, LeaseCheckSettings
from annex.core.models import EndReason
from annex.failsafe.sweeps import (
    DIMENSION_REASON,
    DIMENSION_SWEEP,
    IDLE_REAP,
    LEASE_CHECK,
    METRIC_SUCCEEDED,
    METRIC_TERMINATED,
    SweepReport,
    publish_metrics,
)
from annex_local.template import load_template, resolve_environment
from aws_lambda_powertools import Metrics

FUNCTIONS = {
    "HeartbeatFunction": HeartbeatSettings,
    "LeaseCheckFunction": LeaseCheckSettings,
    "IdleReapFunction": IdleReapSettings,
    "LeaseTimerFunction": LeaseCheckSettings,
}
SWEEPS = {"LeaseCheckFunction": LEASE_CHECK, "IdleReapFunction": IDLE_REAP}


@pytest.fixture(scope="module")
def resources():
    return load_template()["Resources"]


def globals_env():
    return load_template()["Globals"]["Function"]["Environment"]["Variables"]


def statements(resource):
    return [s for policy in resource["Properties"]["Policies"] for s in policy["Statement"]]


def actions(statement):
    a = statement["Action"]
    return [a] if isinstance(a, str) else a


@pytest.mark.parametrize(("logical_id", "model"), FUNCTIONS.items())
def test_each_function_settings_validate_against_the_template(logical_id, model):
    env = resolve_environment(
        logical_id,
        table_name="t-table",
        stack_name="s",
        overrides={
            "AnnexInstanceRole": "role-name",
            "LeaseTimerQueue": "https://sqs.local/q",
            "AnnexInstanceProfile.Arn": "arn:aws:iam::123456789012:instance-profile/annex-instance",
        },
    )
    model.from_env(env)


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_each_function_has_a_log_group_with_retention(resources, logical_id):
    groups = [
        r
        for r in resources.values()
        if r["Type"] == "AWS::Logs::LogGroup"
        and r["Properties"]["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{logical_id}}}"}
    ]
    assert len(groups) == 1
    assert groups[0]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


@pytest.mark.parametrize("logical_id", SWEEPS)
def test_sweeps_run_every_minute_with_retries_and_a_dead_letter_queue(resources, logical_id):
    events = resources[logical_id]["Properties"]["Events"].values()
    (schedule,) = [e for e in events if e["Type"] == "Schedule"]
    props = schedule["Properties"]
    assert props["Schedule"] == "rate(1 minute)"
    assert props["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    queue = props["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
    assert resources[queue]["Type"] == "AWS::SQS::Queue"
    alarmed = [
        r
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"].get("Dimensions")
        == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}]
    ]
    assert len(alarmed) == 1


def errors_alarms(resources, logical_id):
    return [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"].get("MetricName") == "Errors"
        and r["Properties"]["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": logical_id}}]
    ]


def test_a_failing_heartbeat_function_raises_an_alarm(resources):
    (alarm,) = errors_alarms(resources, "HeartbeatFunction")
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_a_failing_lease_timer_is_dead_lettered_into_the_alarmed_failsafe_queue(resources):
    # no Errors alarm of its own ($0.10 a month): retried, then dead-lettered, and the queue is alarmed
    assert errors_alarms(resources, "LeaseTimerFunction") == []
    redrive = resources["LeaseTimerQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["FailsafeDLQ", "Arn"]}
    alarm = resources["FailsafeDeadLetterAlarm"]["Properties"]
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["FailsafeDLQ", "QueueName"]}}
    ]


@pytest.mark.parametrize(("logical_id", "sweep"), SWEEPS.items())
def test_the_stalled_sweeps_alarm_watches_exactly_what_a_successful_sweep_emits(
    resources, capsys, monkeypatch, logical_id, sweep
):
    env = globals_env()
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", env["POWERTOOLS_SERVICE_NAME"])
    metrics = Metrics(namespace=env["POWERTOOLS_METRICS_NAMESPACE"])
    report = SweepReport(name=sweep)
    report.count_terminated(EndReason.IDLE, 2)
    publish_metrics(metrics, report)
    metrics.flush_metrics()
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (emitted,) = [b for b in blobs if METRIC_SUCCEEDED in b]
    (directive,) = emitted["_aws"]["CloudWatchMetrics"]
    emitted_dims = {name: emitted[name] for name in directive["Dimensions"][0]}

    (alarm,) = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"].get("MetricName") == METRIC_SUCCEEDED
    ]
    assert alarm["Namespace"] == directive["Namespace"]
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == emitted_dims
    assert alarm["TreatMissingData"] == "breaching"
    # five one-minute periods in a row, each with fewer successes than there are sweeps a minute
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (60, 5, 5)
    assert alarm["ComparisonOperator"] == "LessThanThreshold"
    assert alarm["Threshold"] == len(SWEEPS)
    schedules = [
        e["Properties"]["Schedule"]
        for r in resources.values()
        if r["Type"] == "AWS::Serverless::Function"
        for e in (r["Properties"].get("Events") or {}).values()
        if e["Type"] == "Schedule" and e["Properties"]["Schedule"] == "rate(1 minute)"
    ]
    assert len(schedules) == len(SWEEPS)  # every minute-schedule is a sweep the alarm counts
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    (terminated,) = [b for b in blobs if METRIC_TERMINATED in b]
    assert (terminated[DIMENSION_REASON], terminated[DIMENSION_SWEEP]) == ("idle", sweep)


def test_a_failed_sweep_emits_no_success(capsys):
    metrics = Metrics(namespace="Annex")
    report = SweepReport(name=LEASE_CHECK)
    report.fail("orphan sweep", RuntimeError("x"))
    publish_metrics(metrics, report)
    metrics.flush_metrics()
    assert METRIC_SUCCEEDED not in capsys.readouterr().out


@pytest.mark.parametrize("logical_id", SWEEPS)
def test_sweeps_may_terminate_only_this_stacks_instances(resources, logical_id):
    terminate = [s for s in statements(resources[logical_id]) if "ec2:TerminateInstances" in actions(s)]
    assert len(terminate) == 1
    assert terminate[0]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/annex:stack": {"Ref": "AWS::StackName"}},
        # The tag alone can be written by anyone with ec2:CreateTags: the profile cannot be.
        "ArnEquals": {"ec2:InstanceProfile": {"Fn::GetAtt": ["AnnexInstanceProfile", "Arn"]}},
    }
    for statement in statements(resources[logical_id]):
        assert not any(a.endswith("*") for a in actions(statement))
        if statement["Resource"] == "*":
            assert actions(statement) == ["ec2:DescribeInstances"]
    due = [
        s
        for s in statements(resources[logical_id])
        if s["Resource"] == {"Fn::Sub": "${AnnexTable.Arn}/index/due"}
    ]
    assert [actions(s) for s in due] == [["dynamodb:Query"]]


def test_the_heartbeat_function_reads_and_updates_records_and_adds_history_and_nothing_else(resources):
    (statement,) = statements(resources["HeartbeatFunction"])
    # PutItem: a node's reported boot problem becomes one history event
    assert sorted(actions(statement)) == ["dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    assert statement["Resource"] == {"Fn::GetAtt": ["AnnexTable", "Arn"]}
    env = resources["HeartbeatFunction"]["Properties"]["Environment"]["Variables"]
    assert env["INSTANCE_ROLE_NAME"] == {"Ref": "AnnexInstanceRole"}
    (event,) = resources["HeartbeatFunction"]["Properties"]["Events"].values()
    assert (event["Properties"]["Path"], event["Properties"]["Method"]) == ("/heartbeat", "POST")


def test_the_instance_role_may_invoke_only_the_heartbeat_route(resources):
    (policy,) = [
        r
        for r in resources.values()
        if r["Type"] == "AWS::IAM::Policy" and r["Properties"]["Roles"] == [{"Ref": "AnnexInstanceRole"}]
    ]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "execute-api:Invoke"
    assert statement["Resource"]["Fn::Sub"].endswith("${HeartbeatApi}/v1/POST/heartbeat")
