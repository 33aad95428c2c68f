"""The idle-reap function, every minute (EventBridge schedule): terminate idle and silent instances.
Thin: the sweep handler shape, one domain call."""

from __future__ import annotations

from datetime import datetime
from functools import cache

from annex import coldstart
from annex.core.config import IdleReapSettings
from annex.failsafe.idle_reap import run_idle_reap
from annex.failsafe.sweeps import SweepDeps, SweepReport, sweep_handler
from aws_lambda_powertools import Logger, Metrics

coldstart.loaded()

logger = Logger()
metrics = Metrics()


@cache
def settings() -> IdleReapSettings:
    return IdleReapSettings.from_env()


@cache
def deps() -> SweepDeps:
    return SweepDeps.from_settings(settings())


def run(deps: SweepDeps, cfg: IdleReapSettings, now: datetime) -> SweepReport:
    return run_idle_reap(
        deps.store, deps.ec2, now=now, timing=cfg, retention=cfg.retention, breaker=cfg, workers=deps.workers
    )


handler = sweep_handler(settings, deps, run, logger=logger, metrics=metrics)
