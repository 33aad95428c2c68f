"""EventBridge rules whose target is a function, on the local stack: the rule invokes the function
asynchronously, as AWS does. moto's EventBridge delivers to SQS but not to Lambda, so each such rule gets a
local delivery queue (annex_local.aws), and this invoker plays Lambda's asynchronous invocation from it:
one event per invocation; a failed invocation is retried MaximumRetryAttempts times (the function's
EventInvokeConfig; Lambda's default is 2), about a minute then two minutes later; an event older than
MaximumEventAgeInSeconds is not invoked again; what is left goes to the function's on-failure destination
as Lambda's invocation record (requestContext with the function's ARN, the condition and the invoke
count; the request and the error)."""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from annex_local.template import functions

log = logging.getLogger("annex_local.async_invoke")
LAMBDA_DEFAULT_RETRIES = 2  # Lambda's asynchronous invocation, when EventInvokeConfig does not say
LAMBDA_DEFAULT_MAX_AGE = 21_600  # six hours
RETRY_DELAYS = (60, 120)  # Lambda waits about a minute before the first retry, two before the second
ATTEMPT = "annex-local-attempt"
FIRST_SEEN = "annex-local-first-seen"


@dataclass(frozen=True)
class AsyncConfig:
    """A function's asynchronous invocation settings, from its EventInvokeConfig in template.yaml."""

    function_id: str
    max_retries: int
    max_age_seconds: int
    on_failure_logical_id: str | None


def async_config(function_id: str) -> AsyncConfig:
    props = functions()[function_id].get("Properties", {})
    config = props.get("EventInvokeConfig") or {}
    destination = ((config.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
    on_failure = None
    if isinstance(destination, dict) and "Fn::GetAtt" in destination:
        on_failure = str(destination["Fn::GetAtt"][0])
    return AsyncConfig(
        function_id=function_id,
        max_retries=int(config.get("MaximumRetryAttempts", LAMBDA_DEFAULT_RETRIES)),
        max_age_seconds=int(config.get("MaximumEventAgeInSeconds", LAMBDA_DEFAULT_MAX_AGE)),
        on_failure_logical_id=on_failure,
    )


class AsyncInvoker:
    def __init__(
        self,
        config: AsyncConfig,
        *,
        sqs: Any,
        queue_url: str,
        invoke: Callable[[str, Any], Any],
        function_arn: str,
        on_failure_queue_url: str | None,
        retry_delays: tuple[int, ...] = RETRY_DELAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.sqs = sqs
        self.queue_url = queue_url
        self.invoke = invoke
        self.function_arn = function_arn
        self.on_failure_queue_url = on_failure_queue_url
        self.retry_delays = retry_delays
        self.clock = clock
        self.invocations = 0
        self.dead_lettered = 0

    def poll(self) -> int:
        """Take what the rule delivered (and retries now due) and invoke the function once for each."""
        resp = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
        )
        messages = resp.get("Messages", [])
        for message in messages:
            self.handle(message)
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return len(messages)

    def handle(self, message: dict[str, Any]) -> None:
        attrs = message.get("MessageAttributes") or {}
        attempt = int(attrs.get(ATTEMPT, {}).get("StringValue", "1"))
        # the event's age counts from its first invocation (the rule delivered it a moment before)
        first_seen = float(attrs.get(FIRST_SEEN, {}).get("StringValue") or self.clock())
        event = json.loads(message["Body"])
        if isinstance(event, dict) and "detail-type" in event:
            # EventBridge's envelope names the account; moto's delivery to SQS leaves it out.
            event.setdefault("account", self.function_arn.split(":")[4])
        if self.clock() - first_seen > self.config.max_age_seconds:
            self.give_up(event, attempt - 1, "EventAgeExceeded", None)
            return
        self.invocations += 1
        try:
            self.invoke(self.config.function_id, event)
        except Exception as error:
            log.warning("%s failed (attempt %d): %s", self.config.function_id, attempt, error)
            if attempt <= self.config.max_retries:
                self.retry_later(message["Body"], attempt, first_seen)
            else:
                self.give_up(event, attempt, "RetriesExhausted", error)

    def retry_later(self, body: str, attempt: int, first_seen: float) -> None:
        delay = self.retry_delays[min(attempt - 1, len(self.retry_delays) - 1)] if self.retry_delays else 0
        self.sqs.send_message(
            QueueUrl=self.queue_url,
            MessageBody=body,
            DelaySeconds=min(900, delay),
            MessageAttributes={
                ATTEMPT: {"DataType": "Number", "StringValue": str(attempt + 1)},
                FIRST_SEEN: {"DataType": "Number", "StringValue": repr(first_seen)},
            },
        )

    def give_up(self, event: Any, invoke_count: int, condition: str, error: Exception | None) -> None:
        """Lambda's invocation record to the on-failure destination (or nowhere, as Lambda drops it)."""
        log.error("%s: giving up on an event (%s)", self.config.function_id, condition)
        if self.on_failure_queue_url is None:
            return
        record: dict[str, Any] = {
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": f"{self.function_arn}:$LATEST",
                "condition": condition,
                "approximateInvokeCount": invoke_count,
            },
            "requestPayload": event,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST"},
        }
        if error is not None:
            record["responseContext"]["functionError"] = "Unhandled"
            record["responsePayload"] = {
                "errorMessage": str(error),
                "errorType": type(error).__name__,
                "stackTrace": traceback.format_exception_only(error),
            }
        self.sqs.send_message(QueueUrl=self.on_failure_queue_url, MessageBody=json.dumps(record))
        self.dead_lettered += 1

    def run(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("asynchronous invocation of %s failed", self.config.function_id)
            stop.wait(interval)
