"""The interruption function: EC2 spot interruption warnings, rebalance recommendations and state
changes. The EventBridge rule invokes it asynchronously with one event; thin: the event goes to the
domain, which is idempotent. A failure raises, so Lambda retries it (twice) and then sends a record of it
to the stack's dead-letter queue (template.yaml, InterruptionFunction's EventInvokeConfig)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any

from annex import coldstart
from annex.aws import clients
from annex.core.clock import utcnow
from annex.core.config import InterruptionSettings
from annex.failsafe.interruption import InterruptionHandler
from annex.store import AnnexStore
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

coldstart.loaded()

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


def process(event: dict[str, Any], handler: InterruptionHandler, now: datetime) -> dict[str, str]:
    """One EventBridge event. An event that is not an EC2 event of the rule's shape, or a store/EC2
    failure, raises: the invocation fails and Lambda's retries and dead-letter queue take it."""
    outcome = handler.handle(event, now=now)
    logger.info("ec2 event handled", extra={"outcome": outcome.value, "event_id": event.get("id")})
    return {"outcome": outcome.value}


@logger.inject_lambda_context
def handler(
    event: dict[str, Any], context: LambdaContext, clock: Callable[[], datetime] = utcnow
) -> dict[str, str]:
    return process(event, service(), clock())
