"""What a fail-safe sweep reports, and the metrics the alarms watch.

Each successful run emits `SweepSucceeded` (dimension: service); the template alarms when the sweeps
have not each succeeded in five minutes in a row (missing data counts as breaching). A run with any
failure still does all the work it can, but raises at the end (so Lambda counts an error) and does not
record a success. Every other figure of a run is in its log line, not a metric: each custom metric (name
x dimension set) costs $0.30 a month for every hour it is sent, so an idle stack sends only the success.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from annex.aws import clients
from annex.aws.inventory import Ec2Inventory
from annex.core.clock import utcnow
from annex.core.config import CommonSettings, SweepScale
from annex.core.models import EndReason
from annex.core.schedule import ScheduledEvent
from annex.failsafe.termination import Termination
from annex.failsafe.workers import Workers
from annex.store import AnnexStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.utilities.typing import LambdaContext

LEASE_CHECK = "lease-check"
IDLE_REAP = "idle-reap"
METRIC_SUCCEEDED = "SweepSucceeded"
METRIC_TERMINATED = "InstancesTerminated"
METRIC_SILENT_HELD = "SilentTerminationsHeld"
DIMENSION_SWEEP = "sweep"
DIMENSION_REASON = "reason"


class SweepFailed(Exception):
    """Some of a sweep's work failed; what could be done was done, and the next run retries the rest."""


@dataclass
class SweepReport:
    name: str
    due: int = 0
    terminated: Counter[str] = field(default_factory=Counter)  # by end reason
    annexes_ended: int = 0
    rescheduled: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    details: dict[str, int] = field(default_factory=dict)  # sweep-specific figures, logged
    silent_deadlines: dict[Any, datetime] = field(default_factory=dict, repr=False)  # idle-reap's breaker
    items_read: int = 0
    ec2_calls: int = 0
    duration_ms: float = 0.0
    _started: float = field(default=0.0, repr=False)
    _items_before: int = field(default=0, repr=False)
    _calls_before: int = field(default=0, repr=False)

    @classmethod
    def start(cls, name: str, store: AnnexStore, ec2: Ec2Inventory) -> SweepReport:
        return cls(
            name=name,
            _started=time.perf_counter(),
            _items_before=store.items_read,
            _calls_before=ec2.calls,
        )

    def finish(self, store: AnnexStore, ec2: Ec2Inventory) -> SweepReport:
        self.items_read = store.items_read - self._items_before
        self.ec2_calls = ec2.calls - self._calls_before
        self.duration_ms = (time.perf_counter() - self._started) * 1000
        return self

    def close(self, store: AnnexStore, ec2: Ec2Inventory, *, now: datetime) -> SweepReport:
        """Stop the clock and the counters, and record the run's success (GET /health shows it) only if
        nothing failed."""
        self.finish(store, ec2)
        if self.ok:
            store.record_sweep(self.name, now=now, due=self.due)
        return self

    def count_terminated(self, reason: EndReason, n: int) -> None:
        if n:
            self.terminated[reason.value] += n

    def absorb(self, termination: Termination) -> None:
        """Add what a termination step did."""
        for reason, ids in termination.terminated.items():
            self.count_terminated(reason, len(ids))
        self.annexes_ended += len(termination.annexes_ended)
        self.skipped += len(termination.skipped)
        for what, exc in termination.failures.items():
            self.fail(what, exc)

    def fail(self, what: str, exc: BaseException) -> None:
        self.failures.append(f"{what}: {type(exc).__name__}: {exc}")

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, Any]:
        return {
            "sweep": self.name,
            "ok": self.ok,
            "due": self.due,
            "terminated": dict(self.terminated),
            "annexes_ended": self.annexes_ended,
            "rescheduled": self.rescheduled,
            "skipped": self.skipped,
            "items_read": self.items_read,
            "ec2_calls": self.ec2_calls,
            "duration_ms": round(self.duration_ms, 1),
            **self.details,
            "failures": self.failures,
        }

    def raise_if_failed(self) -> None:
        if self.failures:
            raise SweepFailed(
                f"{self.name}: {len(self.failures)} failure(s): " + "; ".join(self.failures[:5])
            )


@dataclass(frozen=True)
class SweepDeps:
    """What a sweep function works with, built once per cold start from its settings."""

    store: AnnexStore
    ec2: Ec2Inventory
    workers: Workers

    @classmethod
    def from_settings[S: CommonSettings](cls, settings: S) -> SweepDeps:
        if not isinstance(settings, SweepScale):
            raise TypeError("a sweep's settings carry its scale (SweepScale)")
        return cls(
            store=AnnexStore(clients.dynamodb(), settings.table_name),
            ec2=Ec2Inventory(
                clients.ec2(), settings.stack_name, instance_profile_arn=settings.instance_profile_arn
            ),
            workers=Workers(settings.sweep_workers),
        )


def conclude(report: SweepReport, metrics: Metrics, logger: Logger) -> dict[str, Any]:
    """The end of every sweep handler: metrics, one log line, and an error (so Lambda counts one and the
    Errors alarm fires) if anything failed."""
    publish_metrics(metrics, report)
    logger.info(f"{report.name} finished", extra=report.summary())
    report.raise_if_failed()
    return report.summary()


def publish_metrics(metrics: Metrics, report: SweepReport) -> None:
    """On success SweepSucceeded (service only: SweepsStalledAlarm counts both sweeps' runs); only when
    there is something to say, SilentTerminationsHeld (idle-reap's breaker; its alarm treats no data as
    OK) and InstancesTerminated once per end reason (its own EMF blob, the sweep and reason as
    dimensions). An idle run sends one metric."""
    if report.ok:
        metrics.add_metric(name=METRIC_SUCCEEDED, unit=MetricUnit.Count, value=1)
    held = report.details.get("silent_held", 0)
    if held:
        metrics.add_metric(name=METRIC_SILENT_HELD, unit=MetricUnit.Count, value=held)
    for reason, count in sorted(report.terminated.items()):
        with single_metric(
            name=METRIC_TERMINATED,
            unit=MetricUnit.Count,
            value=count,
            namespace=metrics.namespace,
            default_dimensions={DIMENSION_SWEEP: report.name},
        ) as metric:
            metric.add_dimension(name=DIMENSION_REASON, value=reason)


def sweep_handler[S: CommonSettings](
    settings: Callable[[], S],
    deps: Callable[[], SweepDeps],
    run: Callable[[SweepDeps, S, datetime], SweepReport],
    *,
    logger: Logger,
    metrics: Metrics,
    clock: Callable[[], datetime] = utcnow,
) -> Callable[[dict[str, Any], LambdaContext], dict[str, Any]]:
    """The Lambda handler of every sweep (EventBridge schedule): parse the event, run the sweep once
    with its settings and dependencies (read once per cold start) at `clock()`, then `conclude`."""

    @logger.inject_lambda_context(clear_state=True)
    @metrics.log_metrics
    def handler(raw: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        event = ScheduledEvent.model_validate(raw)
        logger.append_keys(schedule_event=event.id, scheduled_at=event.time.isoformat())
        report = run(deps(), settings(), clock())
        return conclude(report, metrics, logger)

    return handler
