"""The lease-check function, every minute (EventBridge schedule): end every annex whose lease has passed
and terminate every instance nobody can account for. Thin: one domain call, then its metrics."""

from __future__ import annotations

from functools import cache
from typing import Any

from annex.aws import clients
from annex.core.clock import utcnow
from annex.core.config import LeaseCheckSettings
from annex.failsafe.lease_check import run_lease_check
from annex.failsafe.sweeps import SweepDeps, conclude
from annex.money.checks import run_money_check
from annex.money.notices import Notifier
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
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
def deps() -> SweepDeps:
    return SweepDeps.from_settings(settings())


@cache
def notifier() -> Notifier:
    return Notifier(clients.client("events"), settings().event_bus_name)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=EventBridgeModel)
def handler(event: EventBridgeModel, context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(schedule_event=event.id, scheduled_at=event.time.isoformat())
    cfg, sweep = settings(), deps()
    now = utcnow()
    report = run_lease_check(sweep.store, sweep.ec2, now=now, retention=cfg.retention)
    # Budgets and lease-ending notices, after the leases (their failures fail the run, not the leases).
    money = run_money_check(sweep.store, sweep.ec2, notifier(), cfg, now=now, retention=cfg.retention)
    report.absorb(money.termination)
    report.details.update(budgets_due=money.budgets_due, notices_sent=money.notices)
    if money.live_instances is not None and money.usd_per_hour is not None:
        # The administrators' alarms (LiveInstancesAlarm, SpendRateAlarm) watch these.
        metrics.add_metric(name="LiveInstances", unit=MetricUnit.Count, value=money.live_instances)
        metrics.add_metric(name="EstimatedSpendRate", unit=MetricUnit.NoUnit, value=float(money.usd_per_hour))
    for what, exc in money.failures.items():
        report.fail(what, exc)
    return conclude(report, metrics, logger)
