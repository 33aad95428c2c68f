"""Notice delivery on the local stack. EventBridge rules on the stack's bus target the notice topic; moto
delivers EventBridge events to SQS but not to SNS, so each such rule also gets a local queue, and this
courier delivers what arrives there as SNS would: to every e-mail subscription of the topic whose filter
policy (judged by moto's own SNS filter-policy matcher) admits the message. Delivered notices are
appended to STATE_DIR/notices.jsonl, one JSON object a line, so tests and people can see who got what.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moto.sns.utils import FilterPolicyMatcher

log = logging.getLogger("annex_local.notices")


class NoticeCourier:
    def __init__(self, *, sqs: Any, sns: Any, queue_url: str, topics: list[str], out: Path) -> None:
        self.sqs = sqs
        self.sns = sns
        self.queue_url = queue_url
        self.topics = topics
        self.out = out
        self.delivered = 0

    def subscribers(self, topic: str) -> list[dict[str, Any]]:
        subs = self.sns.list_subscriptions_by_topic(TopicArn=topic).get("Subscriptions", [])
        out = []
        for sub in subs:
            attrs = self.sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
            out.append({**sub, "attributes": attrs})
        return out

    def deliver(self, message: str) -> int:
        """Deliver one message (the EventBridge event, as the SNS target would publish it)."""
        n = 0
        for topic in self.topics:
            for sub in self.subscribers(topic):
                policy = sub["attributes"].get("FilterPolicy")
                scope = sub["attributes"].get("FilterPolicyScope")
                if policy and not FilterPolicyMatcher(json.loads(policy), scope).matches(None, message):
                    continue
                record = {
                    "delivered_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "topic": topic,
                    "protocol": sub["Protocol"],
                    "endpoint": sub["Endpoint"],
                    "subscription": sub["SubscriptionArn"],
                    "message": json.loads(message),
                }
                with self.out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                n += 1
        self.delivered += n
        return n

    def poll(self) -> int:
        resp = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        n = 0
        for msg in resp.get("Messages", []):
            n += self.deliver(msg["Body"])
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
        return n

    def run(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("notice delivery failed")
            stop.wait(interval)
