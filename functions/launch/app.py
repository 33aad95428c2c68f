"""The launch function: the annex table's stream -> EC2 capacity. Thin: each stream record becomes a
LaunchTrigger and one call to the launcher; annex.aws.batch reports the records that failed, so only those
are retried (the template bounds the retries and sends what is left to a dead-letter queue)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from functools import cache, partial
from typing import Any

from annex import coldstart
from annex.aws import clients
from annex.aws.batch import PartialItemFailureResponse, StreamRecord, process_stream_batch
from annex.aws.inventory import Ec2Inventory
from annex.aws.pool_token import PoolTokenParameter
from annex.core.clock import utcnow
from annex.core.config import LaunchSettings
from annex.launch.capacity import Ec2Capacity
from annex.launch.launcher import Launcher
from annex.launch.plan import LaunchOutcome
from annex.store import AnnexStore
from annex.store.stream import LaunchTrigger, ReplaceTrigger
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

coldstart.loaded()

logger = Logger()
metrics = Metrics()


@cache
def settings() -> LaunchSettings:
    return LaunchSettings.from_env()


@cache
def launcher() -> Launcher:
    cfg = settings()
    return Launcher(
        AnnexStore(clients.dynamodb(), cfg.table_name),
        Ec2Inventory(clients.ec2(), cfg.stack_name, instance_profile_arn=cfg.instance_profile_arn),
        Ec2Capacity(clients.ec2_launch()),
        cfg,
        pool_token=PoolTokenParameter(clients.client("ssm"), cfg.pool_token_parameter),
    )


def record_handler(record: StreamRecord, *, clock: Callable[[], datetime] = utcnow) -> None:
    trigger = LaunchTrigger.parse(record.event_name, record.keys, record.new_image)
    if trigger is None:
        replace = ReplaceTrigger.parse(record.event_name, record.keys, record.new_image, record.old_image)
        if replace is not None:
            # Only a spot replacement needs the replacer (and money.service with it): ~11 ms of cold start.
            from annex.launch.replace import Replacer  # noqa: PLC0415 (cold start: replacements only)

            logger.append_keys(annex_id=replace.key.annex_id)
            replaced = Replacer(launcher()).replace(replace.key, now=clock())
            logger.info("replacement %s", replaced.result, extra={"outcome": asdict(replaced)})
            if replaced.result == "replaced":
                metrics.add_metric(name="InstancesReplaced", unit=MetricUnit.Count, value=1)
            return
        logger.info("not a launch request; skipped", extra={"sequence_number": record.sequence_number})
        return
    logger.append_keys(annex_id=trigger.annex_id)
    outcome = launcher().launch(trigger.annex_id, now=clock())
    _report(outcome)


def _report(outcome: LaunchOutcome) -> None:
    logger.info("launch %s", outcome.result, extra={"outcome": asdict(outcome)})
    metrics.add_metric(name="InstancesLaunched", unit=MetricUnit.Count, value=outcome.launched_now)
    if outcome.result in ("partial", "failed"):
        metrics.add_metric(
            name="InstancesNotLaunched", unit=MetricUnit.Count, value=outcome.requested - outcome.launched
        )
    if outcome.result == "failed":
        metrics.add_metric(name="AnnexLaunchFailed", unit=MetricUnit.Count, value=1)
    if outcome.config_errors:
        logger.error("EC2 refused the launch configuration", extra={"note": outcome.note})
        metrics.add_metric(name="LaunchConfigErrors", unit=MetricUnit.Count, value=outcome.config_errors)
    if outcome.terminated:
        metrics.add_metric(name="InstancesTerminated", unit=MetricUnit.Count, value=outcome.terminated)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(
    event: dict[str, Any], context: LambdaContext, *, clock: Callable[[], datetime] = utcnow
) -> PartialItemFailureResponse:
    # Lambda calls handler(event, context); tests inject the clock each record's launch reads.
    return process_stream_batch(event, partial(record_handler, clock=clock), logger)
