"""The one termination path. `stop`, lease-check, idle-reap and the orphan sweep all converge here, and
each step is idempotent: running it again after a crash finishes what the last run started."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from annex.ec2 import Ec2
from annex.models import LIVE_INSTANCE_STATES, Annex, EndReason
from annex.store import AnnexStore


@dataclass
class TerminationResult:
    annex_id: str
    ended_now: bool
    terminated: list[str] = field(default_factory=list)


def end_and_terminate(
    store: AnnexStore,
    ec2: Ec2,
    annex_id: str,
    *,
    reason: EndReason,
    actor: str,
    now: datetime,
    retention: timedelta,
    detail: str = "",
) -> TerminationResult:
    """End the annex (if still live), then terminate every instance it may have. Safe to repeat."""
    ended = store.end_annex(annex_id, reason=reason, now=now, actor=actor, retention=retention, detail=detail)
    annex = ended or store.get_annex(annex_id)
    terminated = terminate_annex_instances(store, ec2, annex, reason=reason, now=now, retention=retention)
    return TerminationResult(annex_id=annex_id, ended_now=ended is not None, terminated=terminated)


def terminate_annex_instances(
    store: AnnexStore, ec2: Ec2, annex: Annex, *, reason: EndReason, now: datetime, retention: timedelta
) -> list[str]:
    """Terminate the annex's instances: those on record and those EC2 knows by tag (a record may not have
    been written yet when a launch was interrupted). Then mark the records."""
    recorded = {i.instance_id for i in store.list_instances(annex.id) if i.state in LIVE_INSTANCE_STATES}
    tagged = {t.instance_id for t in ec2.live_instances(annex.id)}
    targets = recorded | tagged
    if not targets:
        return []
    accepted = ec2.terminate(targets)
    # Records whose instance EC2 no longer knows are ended too: there is nothing left to stop.
    store.mark_instances_ended(annex.id, sorted(recorded), reason=reason, now=now, retention=retention)
    return accepted
