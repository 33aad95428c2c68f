"""Where failures go, as template.yaml deploys it: spot events reach the interruption function without a
queue (EventBridge invokes it asynchronously, only that rule may), and every dead letter of the stack
lands in one alarmed queue ($0.10 a month per alarm, and an idle SQS queue that Lambda polls costs more:
README "Cost model")."""

from __future__ import annotations

from typing import Any

import pytest
from annex_local.template import load_template

DLQ = {"Fn::GetAtt": ["FailsafeDLQ", "Arn"]}


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    return load_template()["Resources"]


def dead_letter_targets(resources: dict[str, Any]) -> dict[str, Any]:
    """Every place the template sends what failed: schedule and rule targets' DeadLetterConfig, event
    source and asynchronous on-failure destinations, functions' DeadLetterQueue, queues' redrive."""
    out: dict[str, Any] = {}
    for name, r in resources.items():
        props = r.get("Properties", {})
        if r["Type"] == "AWS::Events::Rule":
            for t in props.get("Targets", []):
                if "DeadLetterConfig" in t:
                    out[f"{name}.{t['Id']}"] = t["DeadLetterConfig"]["Arn"]
        if r["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in props:
            out[name] = props["RedrivePolicy"]["deadLetterTargetArn"]
        if r["Type"] != "AWS::Serverless::Function":
            continue
        failure = ((props.get("EventInvokeConfig") or {}).get("DestinationConfig") or {}).get("OnFailure")
        if failure:
            out[f"{name}.EventInvokeConfig"] = failure["Destination"]
        if "DeadLetterQueue" in props:
            out[f"{name}.DeadLetterQueue"] = props["DeadLetterQueue"]["TargetArn"]
        for event_name, event in (props.get("Events") or {}).items():
            ep = event.get("Properties", {})
            if "DeadLetterConfig" in ep:
                out[f"{name}.{event_name}"] = ep["DeadLetterConfig"]["Arn"]
            failure = (ep.get("DestinationConfig") or {}).get("OnFailure")
            if failure:
                out[f"{name}.{event_name}"] = failure["Destination"]
    return out


def test_every_dead_letter_of_the_stack_lands_in_the_one_alarmed_queue(resources):
    targets = dead_letter_targets(resources)
    # the sweeps' schedules, the lease timers, the launch stream, and the spot events (rule and function)
    assert {
        "LeaseCheckFunction.EveryMinute",
        "IdleReapFunction.EveryMinute",
        "LeaseTimerQueue",
        "LaunchFunction.AnnexRequested",
        "InterruptionRule.InterruptionFunction",
        "InterruptionFunction.EventInvokeConfig",
    } <= set(targets)
    assert {k: v for k, v in targets.items() if v != DLQ} == {}
    queue_alarms = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"].get("Namespace") == "AWS/SQS"
    ]
    (alarm,) = queue_alarms
    queue_name = {"Fn::GetAtt": ["FailsafeDLQ", "QueueName"]}
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": queue_name}]
    for origin in ("sweep", "lease timer", "launch", "spot event"):
        assert origin in alarm["AlarmDescription"]
    queues = {n for n, r in resources.items() if r["Type"] == "AWS::SQS::Queue"}
    assert queues == {"FailsafeDLQ", "LeaseTimerQueue"}


def test_spot_events_invoke_the_function_directly_and_only_that_rule_may(resources):
    rule = resources["InterruptionRule"]["Properties"]
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["InterruptionFunction", "Arn"]}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    fn = resources["InterruptionFunction"]["Properties"]
    assert not fn.get("Events"), "no event source mapping: nothing polls a queue for it"
    assert fn["EventInvokeConfig"]["MaximumRetryAttempts"] >= 1
    assert fn["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Type"] == "SQS"
    (permission,) = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Permission"
        and r["Properties"]["FunctionName"] == {"Ref": "InterruptionFunction"}
    ]
    assert permission["Action"] == "lambda:InvokeFunction"
    assert permission["Principal"] == {"Fn::Sub": "events.${AWS::URLSuffix}"}
    assert permission["SourceArn"] == {"Fn::GetAtt": ["InterruptionRule", "Arn"]}
    assert permission["SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_eventbridge_may_dead_letter_into_the_queue_from_this_account_only(resources):
    (policy,) = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::SQS::QueuePolicy" and {"Ref": "FailsafeDLQ"} in r["Properties"]["Queues"]
    ]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": {"Fn::Sub": "events.${AWS::URLSuffix}"}}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
