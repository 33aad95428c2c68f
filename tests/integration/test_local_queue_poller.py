"""The local stack's SQS event source (annex_local.queues) processes several batches at once, as Lambda's
event source mapping does: a batch that takes seconds does not hold back the timers behind it."""

from __future__ import annotations

import threading
import time

import boto3
from annex_local.queues import QueueMapping, QueuePoller


def test_a_slow_batch_does_not_hold_back_the_next_one(aws):
    # Given a queue with two timers, one per batch, and a function whose first batch takes long
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="timers")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for body in ("first", "second"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    second_done, first_saw_second = threading.Event(), []
    calls: list[str] = []

    def invoke(function_id: str, event: dict) -> dict:
        body = event["Records"][0]["body"]
        calls.append(body)
        if len(calls) == 1:
            first_saw_second.append(second_done.wait(10))  # the slow batch
        else:
            second_done.set()
        return {"batchItemFailures": []}

    mapping = QueueMapping("LeaseTimerFunction", "LeaseTimerQueue", batch_size=1, report_item_failures=True)
    poller = QueuePoller(mapping, sqs, url, arn, invoke, region="us-east-1")
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop, 0.05))

    # When the poller runs
    thread.start()
    try:
        assert second_done.wait(10)
    finally:
        stop.set()
        thread.join(10)

    # Then the second batch was processed while the first was still running, and both were deleted
    assert first_saw_second == [True]
    assert left_in_queue(sqs, url) == ("0", "0")


def left_in_queue(sqs, url: str) -> tuple[str, str]:
    """(visible, in flight), once the batches still finishing have deleted their messages (≤ 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        left = (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"])
        if left == ("0", "0") or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
