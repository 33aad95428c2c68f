"""The notices function: the annex table's stream -> an "annex ended" notice on the stack's event bus,
whatever ended it (stop, lease, idle, silent, budget, launch failure). Thin: each stream record becomes
an EndedTrigger and one domain call; annex.aws.batch reports the records that failed, so only those are
retried."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import cache, partial
from typing import Any

from annex import coldstart
from annex.aws import clients
from annex.aws.batch import PartialItemFailureResponse, StreamRecord, process_stream_batch
from annex.core.clock import utcnow
from annex.core.config import NoticesSettings
from annex.money.checks import notify_ended
from annex.money.notices import Notifier
from annex.store import AnnexStore
from annex.store.notices import EndedTrigger
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

coldstart.loaded()

logger = Logger()
metrics = Metrics()


@cache
def settings() -> NoticesSettings:
    return NoticesSettings.from_env()


@cache
def store() -> AnnexStore:
    return AnnexStore(clients.dynamodb(), settings().table_name)


@cache
def notifier() -> Notifier:
    return Notifier(clients.client("events"), settings().event_bus_name)


def record_handler(record: StreamRecord, *, clock: Callable[[], datetime] = utcnow) -> None:
    trigger = EndedTrigger.parse(record.event_name, record.keys, record.new_image, record.old_image)
    if trigger is None:
        logger.info("not an annex that just ended; skipped")
        return
    cfg = settings()
    if notify_ended(store(), notifier(), cfg, trigger.annex_id, now=clock(), retention=cfg.retention):
        metrics.add_metric(name="NoticesSent", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(
    event: dict[str, Any], context: LambdaContext, *, clock: Callable[[], datetime] = utcnow
) -> PartialItemFailureResponse:
    # Lambda calls handler(event, context); tests inject the clock each notice reads.
    return process_stream_batch(event, partial(record_handler, clock=clock), logger)
