"""The lease-timer function (SQS event source, the lease-timer queue): a timer armed for a lease end went
off; end the annex if its lease has really passed. Thin: parse, one domain call, partial batch failures
(a message whose annex could not be ended is retried, then dead-lettered)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any

from annex import coldstart
from annex.core.clock import utcnow
from annex.core.config import LeaseCheckSettings
from annex.failsafe.lease_timer import fire, parse_timer
from annex.failsafe.sweeps import SweepDeps
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

coldstart.loaded()

logger = Logger()


@cache
def settings() -> LeaseCheckSettings:
    return LeaseCheckSettings.from_env()


@cache
def deps() -> SweepDeps:
    return SweepDeps.from_settings(settings())


@logger.inject_lambda_context(clear_state=True)
def handler(
    event: dict[str, Any], context: LambdaContext, *, clock: Callable[[], datetime] = utcnow
) -> dict[str, Any]:
    # Lambda calls handler(event, context); tests inject the clock.
    now = clock()
    failed: list[str] = []
    by_annex: dict[str, list[str]] = {}
    for record in event.get("Records", []):
        try:
            by_annex.setdefault(parse_timer(record["body"]), []).append(record["messageId"])
        except (ValueError, KeyError, TypeError):
            logger.error("not a lease timer message", extra={"body": record.get("body")})
            failed.append(record.get("messageId", ""))
    d = deps()
    result = fire(d.store, d.ec2, by_annex, now=now, retention=settings().retention)
    for annex_id in result.failures:
        failed.extend(by_annex.get(annex_id, []))
    logger.info(
        "lease timers fired",
        extra={"annexes": len(by_annex), "ended": result.annexes_ended, "failed": len(failed)},
    )
    return {"batchItemFailures": [{"itemIdentifier": m} for m in failed if m]}
