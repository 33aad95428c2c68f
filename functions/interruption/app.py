"""The interruption function: EC2 spot interruption warnings, rebalance recommendations and state
changes (EventBridge rule -> SQS queue with a DLQ). Thin: each message is one EventBridge event, handed
to the domain; a failed message is reported back so only it is retried (and lands in the DLQ)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any

from annex.aws import clients
from annex.core.clock import utcnow
from annex.core.config import InterruptionSettings
from annex.failsafe.interruption import InterruptionHandler
from annex.store import AnnexStore
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
metrics = Metrics()


@cache
def settings() -> InterruptionSettings:
    return InterruptionSettings.from_env()


@cache
def service() -> InterruptionHandler:
    cfg = settings()
    return InterruptionHandler(
        store=AnnexStore(clients.dynamodb(), cfg.table_name),
        ec2=clients.ec2(),
        stack_name=cfg.stack_name,
        retention=cfg.retention,
    )


def process(event: dict[str, Any], handler: InterruptionHandler, now: datetime) -> dict[str, Any]:
    failures = []
    for record in event.get("Records", []):
        try:
            outcome = handler.handle(json.loads(record["body"]), now=now)
            logger.info(
                "ec2 event handled", extra={"outcome": outcome.value, "message_id": record["messageId"]}
            )
        except Exception:
            logger.exception("ec2 event failed", extra={"message_id": record["messageId"]})
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


@logger.inject_lambda_context
def handler(
    event: dict[str, Any], context: LambdaContext, clock: Callable[[], datetime] = utcnow
) -> dict[str, Any]:
    return process(event, service(), clock())
