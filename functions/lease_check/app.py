"""The lease-check function, every minute (EventBridge schedule): end every annex whose lease has passed
and terminate every instance nobody can account for. Thin: the sweep handler shape, one domain call."""

from __future__ import annotations

from datetime import datetime
from functools import cache

from annex import coldstart
from annex.aws import clients
from annex.core.config import LeaseCheckSettings
from annex.failsafe.lease_check import run_lease_check
from annex.failsafe.lease_timer import TimerQueue, arm_due_soon
from annex.failsafe.sweeps import SweepDeps, SweepReport, sweep_handler
from annex.money.checks import run_money_check
from annex.money.notices import Notifier
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

coldstart.loaded()

logger = Logger()
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


@cache
def timers() -> TimerQueue:
    return TimerQueue(clients.client("sqs"), settings().lease_timer_queue_url)


def run(deps: SweepDeps, cfg: LeaseCheckSettings, now: datetime) -> SweepReport:
    report = run_lease_check(
        deps.store,
        deps.ec2,
        now=now,
        retention=cfg.retention,
        workers=deps.workers,
        orphan_segments=cfg.orphan_segments,
    )
    if cfg.lease_timer_queue_url:
        # Second-precise leases: a timer for each lease ending before the next runs (the backstop is
        # this sweep, a minute later).
        try:
            report.details["lease_timers_armed"] = arm_due_soon(deps.store, timers(), now=now)
        except Exception as error:
            report.fail("lease timers", error)
    # Budgets and lease-ending notices, after the leases (their failures fail the run, not the leases).
    money = run_money_check(deps.store, deps.ec2, notifier(), cfg, now=now, retention=cfg.retention)
    report.absorb(money.termination)
    report.details.update(budgets_due=money.budgets_due, notices_sent=money.notices)
    if money.live_instances and money.usd_per_hour is not None:
        # The administrators' alarms (LiveInstancesAlarm, SpendRateAlarm) watch these; sent only while
        # something is live (their alarms treat no data as OK), so an idle stack does not pay for them.
        metrics.add_metric(name="LiveInstances", unit=MetricUnit.Count, value=money.live_instances)
        metrics.add_metric(name="EstimatedSpendRate", unit=MetricUnit.NoUnit, value=float(money.usd_per_hour))
    for what, exc in money.failures.items():
        report.fail(what, exc)
    return report


handler = sweep_handler(settings, deps, run, logger=logger, metrics=metrics)
