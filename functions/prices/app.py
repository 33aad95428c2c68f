"""The prices function, every six hours (EventBridge schedule): on-demand prices from the AWS Price List
Query API, spot prices from EC2, stored per region, type and market; budget due times follow them.
Thin: one domain call, then its log line."""

from __future__ import annotations

from functools import cache
from typing import Any

from annex import coldstart
from annex.aws import clients
from annex.core.clock import utcnow
from annex.core.config import PricesSettings
from annex.core.schedule import ScheduledEvent
from annex.pricing.refresh import refresh_prices
from annex.store import AnnexStore
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

coldstart.loaded()

logger = Logger()
metrics = Metrics()


class PricesFailed(Exception):
    """Some prices could not be read or stored; the next run retries."""


@cache
def settings() -> PricesSettings:
    return PricesSettings.from_env()


@cache
def pricing() -> Any:
    """The Price List Query API is served from a few regions only (PRICE_LIST_REGION)."""
    return clients.client("pricing", settings().price_list_region)


@cache
def store() -> AnnexStore:
    return AnnexStore(clients.dynamodb(), settings().table_name)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    ScheduledEvent.model_validate(event)  # a schedule's event, or a ValidationError
    cfg = settings()
    out = refresh_prices(
        store(),
        pricing(),
        clients.ec2(),
        region=cfg.region,
        instance_types=cfg.allowed_instance_types,
        now=utcnow(),
        retention=cfg.retention,
    )
    # The counts go to the log line, not to a metric: nothing alarms on them (README "Cost model").
    summary = {
        "on_demand": out.on_demand,
        "spot": out.spot,
        "missing": out.missing,
        "budgets_rescheduled": out.budgets_rescheduled,
        "failures": {k: str(v) for k, v in out.failures.items()},
    }
    logger.info("prices refreshed", extra=summary)
    if out.failures or out.missing:
        raise PricesFailed(f"prices incomplete: {summary}")
    return summary
