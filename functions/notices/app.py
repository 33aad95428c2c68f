"""The notices function: the annex table's stream -> an "annex ended" notice on the stack's event bus,
whatever ended it (stop, lease, idle, silent, budget, launch failure). Thin: each stream record becomes
an EndedTrigger and one domain call; Powertools reports the records that failed, so only those are
retried."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import cache, partial
from typing import Any

# First, before anything imports pydantic: Powertools' batch utility then skips importing its parser
# models (utilities/batch/types.py builds them only when pydantic is already loaded), 30-40 ms CPU of
# this function's cold start. tests/unit/test_cold_imports.py checks it.
from annex import coldstart
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

# isort: split
from annex.aws import clients
from annex.core.clock import utcnow
from annex.core.config import NoticesSettings
from annex.money.checks import notify_ended
from annex.money.notices import Notifier
from annex.store import AnnexStore
from annex.store.notices import EndedTrigger
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

coldstart.loaded()

logger = Logger()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


@cache
def settings() -> NoticesSettings:
    return NoticesSettings.from_env()


@cache
def store() -> AnnexStore:
    return AnnexStore(clients.dynamodb(), settings().table_name)


@cache
def notifier() -> Notifier:
    return Notifier(clients.client("events"), settings().event_bus_name)


def record_handler(record: DynamoDBRecord, *, clock: Callable[[], datetime] = utcnow) -> None:
    change = record.dynamodb
    trigger = EndedTrigger.parse(
        record.raw_event.get("eventName"),
        change.keys if change else {},
        change.new_image if change else {},
        change.old_image if change else {},
    )
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
    return process_partial_response(
        event=event, record_handler=partial(record_handler, clock=clock), processor=processor, context=context
    )
