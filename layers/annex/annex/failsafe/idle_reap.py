"""idle-reap, every minute: terminate instances that are idle or silent.

The instances to look at come from the sparse `due` index (`due_kind` = "reap", `due_at` <= now), which
launch (launched_at + boot grace) and every heartbeat (the earlier of the idle and silence deadlines)
keep current; the cost grows with what is due, never with the table. For each, with the clock passed in:
- idle (no claimed slot since `idle_since`, for longer than its annex's idle timeout): reap, reason idle;
- silent (never heard from within the boot grace, or no heartbeat within the loss grace): reap, silent;
- otherwise (busy, or a heartbeat moved things): just move `due_at` to the next check.
Terminations go through the one termination path (claim, TerminateInstances, record with the quota unit
back exactly once; an annex whose last instance went ends with reason all-instances-gone).

The circuit breaker (`SilentBreaker`): when one run finds a large share of the stack's live instances
silent at once (a broken heartbeat path, a revoked credential, someone replaying the fail-safe against
the fleet), their silent terminations are held (rescheduled to their silence deadline + the hold), the
run reports `silent_held` (metric SilentTerminationsHeld, alarmed) and logs why. A single silent
instance is still reaped; a held one is reaped once the hold is over; the lease still ends them all.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from annex.aws.inventory import Ec2Inventory
from annex.core.config import ReapTiming, SilentBreaker
from annex.core.models import EndReason, InstanceState
from annex.failsafe.rules import decide, silent_after
from annex.failsafe.sweeps import IDLE_REAP, SweepReport
from annex.failsafe.termination import InstanceTarget, reap_instances
from annex.failsafe.workers import SERIAL, Workers
from annex.store import AnnexStore, InstanceKey

log = logging.getLogger(__name__)
ACTOR = "idle-reap"


def run_idle_reap(
    store: AnnexStore,
    ec2: Ec2Inventory,
    *,
    now: datetime,
    timing: ReapTiming,
    retention: timedelta,
    breaker: SilentBreaker | None = None,
    workers: Workers = SERIAL,
) -> SweepReport:
    """One run. Records its success (shown by GET /health) only if every step succeeded."""
    report = SweepReport.start(IDLE_REAP, store, ec2)
    try:
        targets = _plan(store, now=now, timing=timing, report=report)
        if breaker is not None:
            targets = _hold_mass_silence(
                store, targets, now=now, timing=timing, breaker=breaker, report=report
            )
    except Exception as exc:
        log.exception("could not read the instances due for a check")
        report.fail("due instances", exc)
        targets = []
    if targets:
        try:
            result = reap_instances(
                store, ec2, targets, actor=ACTOR, now=now, retention=retention, workers=workers
            )
        except Exception as exc:
            log.exception("could not terminate the reaped instances")
            report.fail("terminate", exc)
        else:
            report.absorb(result)
    return report.close(store, ec2, now=now)


def _plan(
    store: AnnexStore, *, now: datetime, timing: ReapTiming, report: SweepReport
) -> list[InstanceTarget]:
    """Decide for every due instance: reap (a target) or look again later (rescheduled here)."""
    due = list(store.due_instances(now=now))
    report.due = len(due)
    if not due:
        return []
    instances, annexes = store.get_instances_with_annexes(due)
    targets: list[InstanceTarget] = []
    for key in due:
        record = instances.get(key)
        if record is None:
            continue  # the index lags a deleted record
        instance = record.instance
        if instance.state is InstanceState.TERMINATED:
            continue  # the index lags the termination
        found = annexes.get(key.annex_id)
        annex = found.annex if found else None
        if annex is None or not annex.live:
            # Its annex has ended (a crash between ending it and terminating, or the record is gone).
            reason = (annex.end_reason if annex else None) or EndReason.ORPHAN
            targets.append(InstanceTarget(key, annex, reason, "its annex has ended"))
            continue
        if instance.state is InstanceState.TERMINATING:
            # Claimed by a run that did not finish: finish it.
            targets.append(InstanceTarget(key, annex, instance.end_reason or EndReason.ORPHAN))
            continue
        if record.due_at is not None and record.due_at > now:
            continue  # a heartbeat moved it since the index was read
        verdict = decide(instance, annex.idle_timeout, timing, now)
        if verdict.reason is not None:
            targets.append(
                InstanceTarget(key, annex, verdict.reason, verdict.detail, claim=True, seen=record.heartbeat)
            )
            if verdict.reason is EndReason.SILENT:
                report.silent_deadlines[key] = silent_after(instance, timing)
        elif store.reschedule_instance(key, due_at=verdict.next_check, seen=record.heartbeat):
            report.rescheduled += 1
    return targets


def _hold_mass_silence(
    store: AnnexStore,
    targets: list[InstanceTarget],
    *,
    now: datetime,
    timing: ReapTiming,
    breaker: SilentBreaker,
    report: SweepReport,
) -> list[InstanceTarget]:
    """The breaker: hold the silent terminations of this run if they are too many at once."""
    silent = [t for t in targets if t.claim and t.key in report.silent_deadlines]
    if len(silent) < breaker.silent_hold_min:
        return targets
    fleet = store.live_instances_in_stack()
    if len(silent) < breaker.silent_hold_share * fleet:
        return targets
    held: set[InstanceKey] = set()
    for target in silent:
        until = report.silent_deadlines[target.key] + breaker.silent_hold
        if until <= now:
            continue  # held long enough: reap it now
        held.add(target.key)
        store.reschedule_instance(target.key, due_at=until, seen=target.seen)
    if held:
        report.details["silent_held"] = len(held)
        log.warning(
            "holding %d silent terminations: %d of the stack's %d live instances went silent in one run "
            "(breaker: at least %d and %.0f%%); they are reaped when the hold (%s) ends unless they "
            "report, and their leases still end them",
            len(held),
            len(silent),
            fleet,
            breaker.silent_hold_min,
            breaker.silent_hold_share * 100,
            breaker.silent_hold,
        )
    return [t for t in targets if t.key not in held]
