"""The local stack invokes a rule's target function as Lambda's asynchronous invocation does: once per
event; a failure retried as the function's EventInvokeConfig says, later; then a record of the failure (the
event, the error, which function, why) in the on-failure destination."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from annex_local.async_invoke import AsyncInvoker, async_config
from moto import mock_aws

FN_ARN = "arn:aws:lambda:us-east-1:123456789012:function:annex-local-InterruptionFunction"
EVENT = {
    "version": "0",
    "id": "e-1",
    "source": "aws.ec2",
    "account": "123456789012",
    "detail-type": "x",
    "detail": {},
}


@pytest.fixture
def sqs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def invoker(sqs: Any, invoke: Any, clock: Clock) -> tuple[AsyncInvoker, str, str]:
    delivery = sqs.create_queue(QueueName="delivery")["QueueUrl"]
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    config = async_config("InterruptionFunction")
    return (
        AsyncInvoker(
            config,
            sqs=sqs,
            queue_url=delivery,
            invoke=invoke,
            function_arn=FN_ARN,
            on_failure_queue_url=dlq,
            retry_delays=(0,),
            clock=clock,
        ),
        delivery,
        dlq,
    )


def dead_letters(sqs: Any, dlq: str) -> list[dict[str, Any]]:
    msgs = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in msgs]


def test_the_template_gives_the_interruption_function_lambdas_retries_and_the_stacks_dlq():
    config = async_config("InterruptionFunction")
    assert config.max_retries == 2
    assert config.on_failure_logical_id == "FailsafeDLQ"


def test_an_event_is_invoked_once_with_the_whole_event(sqs):
    calls: list[tuple[str, Any]] = []
    inv, delivery, dlq = invoker(sqs, lambda fn, event: calls.append((fn, event)), Clock())
    sqs.send_message(QueueUrl=delivery, MessageBody=json.dumps(EVENT))
    assert inv.poll() == 1
    assert inv.poll() == 0
    assert calls == [("InterruptionFunction", EVENT)]
    assert dead_letters(sqs, dlq) == []


def test_the_envelope_names_the_account_as_eventbridges_does(sqs):
    # moto's delivery to SQS leaves the account out of the envelope; EventBridge always sends it
    calls: list[Any] = []
    inv, delivery, _ = invoker(sqs, lambda fn, event: calls.append(event), Clock())
    sqs.send_message(
        QueueUrl=delivery, MessageBody=json.dumps({k: v for k, v in EVENT.items() if k != "account"})
    )
    inv.poll()
    assert calls == [EVENT]


def test_a_failing_event_is_retried_then_recorded_in_the_destination(sqs):
    calls: list[Any] = []

    def failing(fn: str, event: Any) -> None:
        calls.append(event)
        raise ValueError("1 validation error for Ec2Event")

    inv, delivery, dlq = invoker(sqs, failing, Clock())
    sqs.send_message(QueueUrl=delivery, MessageBody=json.dumps(EVENT))
    for _ in range(5):
        inv.poll()
    assert len(calls) == 1 + async_config("InterruptionFunction").max_retries
    (record,) = dead_letters(sqs, dlq)
    assert record["requestContext"]["functionArn"] == f"{FN_ARN}:$LATEST"
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == len(calls)
    assert record["requestPayload"] == EVENT
    assert record["responsePayload"]["errorType"] == "ValueError"
    assert "validation error" in record["responsePayload"]["errorMessage"]


def test_a_retry_of_an_event_past_its_maximum_age_is_not_invoked(sqs):
    clock = Clock()
    calls: list[Any] = []

    def failing_then_late(fn: str, event: Any) -> None:
        calls.append(event)
        clock.now += async_config("InterruptionFunction").max_age_seconds + 1
        raise RuntimeError("DynamoDB unavailable")

    inv, delivery, dlq = invoker(sqs, failing_then_late, clock)
    sqs.send_message(QueueUrl=delivery, MessageBody=json.dumps(EVENT))
    for _ in range(3):
        inv.poll()
    assert len(calls) == 1
    (record,) = dead_letters(sqs, dlq)
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestPayload"] == EVENT
