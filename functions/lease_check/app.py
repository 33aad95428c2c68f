"""The lease-check function, every minute (EventBridge schedule): end every annex whose lease has passed
and terminate every instance nobody can account for. Thin: the sweep handler shape, one domain call."""

from __future__ import annotations

from datetime import datetime
from functools import cache

from annex.core.config import LeaseCheckSettings
from annex.failsafe.lease_check import run_lease_check
from annex.failsafe.sweeps import SweepDeps, SweepReport, sweep_handler
from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@cache
def settings() -> LeaseCheckSettings:
    return LeaseCheckSettings.from_env()


@cache
def deps() -> SweepDeps:
    return SweepDeps.from_settings(settings())


def run(deps: SweepDeps, cfg: LeaseCheckSettings, now: datetime) -> SweepReport:
    return run_lease_check(deps.store, deps.ec2, now=now, retention=cfg.retention)


handler = sweep_handler(settings, deps, run, logger=logger, tracer=tracer, metrics=metrics)
