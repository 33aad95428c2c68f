"""SQS event sources from template.yaml (`Type: SQS`): each queue is polled against the embedded moto
(which holds a message back for its DelaySeconds, as SQS does) and its batches handed to the function;
with ReportBatchItemFailures only the failed messages stay for a retry, the others are deleted,
as Lambda's event source mapping does. The queue's own redrive policy dead-letters repeats."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from annex_local.template import events_of_type

log = logging.getLogger("annex_local.queues")
# Lambda's SQS event source mapping starts with five concurrent batches (and scales up from there).
BATCHES_AT_ONCE = 5


@dataclass(frozen=True)
class QueueMapping:
    function_id: str
    queue_logical_id: str
    batch_size: int
    report_item_failures: bool


def queue_mappings() -> list[QueueMapping]:
    out = []
    for fn, _name, props in events_of_type("SQS"):
        queue = props["Queue"]
        out.append(
            QueueMapping(
                function_id=fn,
                queue_logical_id=queue["Fn::GetAtt"][0],
                batch_size=int(props.get("BatchSize", 10)),
                report_item_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
            )
        )
    return out


class QueuePoller:
    def __init__(
        self,
        mapping: QueueMapping,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        invoke: Callable[[str, Any], Any],
        *,
        region: str,
    ) -> None:
        self.mapping = mapping
        self.sqs = sqs
        self.url = queue_url
        self.arn = queue_arn
        self.invoke = invoke
        self.region = region

    def run(self, stop: threading.Event, interval: float = 0.1) -> None:
        """Lambda's event source mapping long-polls, and SQS answers a long poll as soon as a message is
        visible. moto's long poll only looks again once a second (a delayed message turning visible
        wakes nobody), so this polls without waiting, every `interval` while the queue is empty and at
        once after a batch. Like the mapping, it processes up to BATCHES_AT_ONCE batches at a time (a
        batch that takes seconds does not hold back the messages behind it), and receives no more than
        it can process."""
        free = threading.Semaphore(BATCHES_AT_ONCE)
        while not stop.is_set():
            if not free.acquire(timeout=interval):
                continue
            try:
                messages = self._receive()
            except Exception:
                log.exception("polling %s failed", self.mapping.queue_logical_id)
                messages = []
            if not messages:
                free.release()
                stop.wait(interval)
                continue
            threading.Thread(
                target=self._process_then_release,
                args=(messages, free),
                name=f"batch-{self.mapping.function_id}",
                daemon=True,
            ).start()

    def poll_once(self, wait: float = 0.0) -> int:
        """Receive one batch and process it in this thread; returns how many messages were done."""
        messages = self._receive(wait)
        return self._process(messages) if messages else 0

    def _receive(self, wait: float = 0.0) -> list[dict[str, Any]]:
        resp = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=min(10, self.mapping.batch_size),
            WaitTimeSeconds=max(0, min(20, int(wait))),
            AttributeNames=["All"],
        )
        return list(resp.get("Messages", []))

    def _process_then_release(self, messages: list[dict[str, Any]], free: threading.Semaphore) -> None:
        try:
            self._process(messages)
        except Exception:
            log.exception("%s: a batch could not be processed", self.mapping.function_id)
        finally:
            free.release()

    def _process(self, messages: list[dict[str, Any]]) -> int:
        event = {"Records": [self._record(m) for m in messages]}
        try:
            result = self.invoke(self.mapping.function_id, event)
        except Exception:
            log.exception("%s failed; the batch returns to the queue", self.mapping.function_id)
            return 0
        failed: set[str] = set()
        if self.mapping.report_item_failures and isinstance(result, dict):
            failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self.sqs.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        return len(done)

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": {},
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.arn,
            "awsRegion": self.region,
        }
