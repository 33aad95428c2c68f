"""The lease-check function, every minute (EventBridge schedule): end every annex whose lease has passed
and terminate every instance nobody can account for. Thin: one domain call, then its metrics."""

from __future__ import annotations

from functools import cache
from typing import Any

from annex import clients
from annex.clock import utcnow
from annex.config import LeaseCheckSettings
from annex.ec2 import Ec2
from annex.lease_check import run_lease_check
from annex.store import AnnexStore
from annex.sweeps import publish_metrics
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@cache
def settings() -> LeaseCheckSettings:
    return LeaseCheckSettings.from_env()


@cache
def store() -> AnnexStore:
    return AnnexStore(clients.dynamodb(), settings().table_name)


@cache
def ec2() -> Ec2:
    return Ec2(clients.ec2(), settings().stack_name)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=EventBridgeModel)
def handler(event: EventBridgeModel, context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(schedule_event=event.id, scheduled_at=event.time.isoformat())
    report = run_lease_check(store(), ec2(), now=utcnow(), retention=settings().retention)
    publish_metrics(metrics, report)
    logger.info("lease-check finished", extra=report.summary())
    report.raise_if_failed()
    return report.summary()
