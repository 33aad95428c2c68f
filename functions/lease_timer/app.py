"""The lease-timer function (SQS event source, the lease-timer queue): a timer armed for a lease end went
off; end the annex if its lease has really passed. Thin: parse, one domain call, partial batch failures
(a message whose annex could not be ended is retried, then dead-lettered)."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from annex.core.clock import utcnow
from annex.core.config import LeaseCheckSettings
from annex.failsafe.lease_timer import fire, parse_timer
from annex.failsafe.sweeps import SweepDeps

log = logging.getLogger(__name__)


@cache
def settings() -> LeaseCheckSettings:
    return LeaseCheckSettings.from_env()


@cache
def deps() -> SweepDeps:
    return SweepDeps.from_settings(settings())


def handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    now = utcnow()
    failed: list[str] = []
    by_annex: dict[str, list[str]] = {}
    for record in event.get("Records", []):
        try:
            by_annex.setdefault(parse_timer(record["body"]), []).append(record["messageId"])
        except (ValueError, KeyError, TypeError):
            log.error("not a lease timer message: %r", record.get("body"))
            failed.append(record.get("messageId", ""))
    d = deps()
    result = fire(d.store, d.ec2, by_annex, now=now, retention=settings().retention)
    for annex_id in result.failures:
        failed.extend(by_annex.get(annex_id, []))
    log.info(
        "lease timers fired",
        extra={"annexes": len(by_annex), "ended": result.annexes_ended, "failed": len(failed)},
    )
    return {"batchItemFailures": [{"itemIdentifier": m} for m in failed if m]}
