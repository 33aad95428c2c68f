"""The one termination path. `stop`, lease-check, idle-reap and the orphan sweep all converge here, and
each step is idempotent: running it again after a crash finishes what the last run started.

Two shapes, one order of steps each:
- a whole annex (`end_and_terminate[_many]`): end the record first (so nothing new launches for it and
  its quota comes back), then mark its instance records, then TerminateInstances for every instance on
  record or tagged with its id. A crash after the first step leaves an ended annex with running
  instances: the orphan sweep terminates exactly those (and marks their records) on its next run.
- single instances (`terminate_instances`, for idle-reap and the orphan sweep): claim each record
  (`terminating`, still in the `due` index), TerminateInstances, then record each termination and give
  its quota unit back in one transaction. A crash before the last step leaves the claim due: the next
  idle-reap finishes it, and the conditional transaction releases the unit exactly once. An annex whose
  last instance went ends too (reason all-instances-gone), through the whole-annex path.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from annex.aws.ec2 import Ec2
from annex.core.errors import LeaseNotDue
from annex.core.models import Annex, AnnexState, EndReason, InstanceState
from annex.store import AnnexStore, InstanceEnd, annex_from_item

log = logging.getLogger(__name__)


@dataclass
class TerminationResult:
    annex_id: str
    ended_now: bool
    terminated: list[str] = field(default_factory=list)


@dataclass
class BatchTermination:
    """What `end_and_terminate_many` did. One annex failing does not stop the others."""

    results: list[TerminationResult] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)  # lease-check only: extended since the index read
    failures: dict[str, Exception] = field(default_factory=dict)

    @property
    def terminated(self) -> list[str]:
        return [i for r in self.results for i in r.terminated]


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
    batch = end_and_terminate_many(
        store, ec2, [annex_id], reason=reason, actor=actor, now=now, retention=retention, detail=detail
    )
    if annex_id in batch.failures:
        raise batch.failures[annex_id]
    return batch.results[0]


def end_and_terminate_many(
    store: AnnexStore,
    ec2: Ec2,
    annex_ids: Iterable[str],
    *,
    reason: EndReason,
    actor: str,
    now: datetime,
    retention: timedelta,
    detail: str = "",
    due_by: datetime | None = None,
) -> BatchTermination:
    """End each annex, then terminate all their instances in batched calls (one DescribeInstances per
    200 annexes, one TerminateInstances per 500 instances). With `due_by` (the lease-check), an annex
    whose lease was extended past it since the index was read is left alone (`not_due`)."""
    batch = BatchTermination()
    annexes: list[Annex] = []
    ended_now: set[str] = set()
    for annex_id in annex_ids:
        try:
            ended = store.end_annex(
                annex_id,
                reason=reason,
                now=now,
                actor=actor,
                retention=retention,
                detail=detail,
                due_by=due_by,
            )
            annexes.append(ended or store.get_annex(annex_id))
        except LeaseNotDue:
            batch.not_due.append(annex_id)
            continue
        except Exception as exc:  # one bad record must not keep the others running
            log.exception("could not end annex %s", annex_id)
            batch.failures[annex_id] = exc
            continue
        if ended is not None:
            ended_now.add(annex_id)
    terminated = terminate_annexes_instances(store, ec2, annexes, reason=reason, now=now, retention=retention)
    batch.results = [
        TerminationResult(annex_id=a.id, ended_now=a.id in ended_now, terminated=terminated.get(a.id, []))
        for a in annexes
    ]
    return batch


def terminate_annex_instances(
    store: AnnexStore, ec2: Ec2, annex: Annex, *, reason: EndReason, now: datetime, retention: timedelta
) -> list[str]:
    """Terminate one annex's instances: those on record and those EC2 knows by tag (a record may not
    have been written yet when a launch was interrupted), marking the records."""
    return terminate_annexes_instances(store, ec2, [annex], reason=reason, now=now, retention=retention).get(
        annex.id, []
    )


def terminate_annexes_instances(
    store: AnnexStore,
    ec2: Ec2,
    annexes: Sequence[Annex],
    *,
    reason: EndReason,
    now: datetime,
    retention: timedelta,
) -> dict[str, list[str]]:
    """Mark the instance records of these (ended) annexes, then terminate their instances in batched
    calls. Returns, per annex, the instances EC2 accepted to terminate."""
    if not annexes:
        return {}
    recorded: dict[str, list[str]] = {
        a.id: [i.instance_id for i in store.list_instances(a.id) if i.state is not InstanceState.TERMINATED]
        for a in annexes
    }
    targets: dict[str, set[str]] = {a.id: set(recorded[a.id]) for a in annexes}
    for tagged in ec2.live_instances_of(targets):
        if tagged.annex_id in targets:
            targets[tagged.annex_id].add(tagged.instance_id)
    # Mark the records first: a crash after this leaves running instances of an ended annex, which the
    # orphan sweep terminates. (Marking after TerminateInstances would leave live records of terminated
    # instances that no sweep of this annex would visit again.) Records whose instance EC2 no longer
    # knows are ended too: there is nothing left to stop.
    for annex in annexes:
        store.mark_instances_ended(
            annex.id,
            sorted(recorded[annex.id]),
            reason=annex.end_reason or reason,
            now=now,
            retention=retention,
        )
    every = [i for ids in targets.values() for i in ids]
    accepted = set(ec2.terminate(every)) if every else set()
    return {annex_id: sorted(ids & accepted) for annex_id, ids in targets.items()}


# --- one instance at a time (idle-reap, orphan sweep) -----------------------------------------------


@dataclass(frozen=True)
class InstanceTarget:
    """An instance to terminate. `annex` is its annex record as read (None when the record is gone).

    `claim`: first mark the record `terminating`, conditional on no heartbeat having landed since
    `seen_heartbeat` (idle-reap decides from that heartbeat). False when the reason does not depend on
    heartbeats (a passed lease tag) or the record is already claimed."""

    annex_id: str
    instance_id: str
    annex: Annex | None
    reason: EndReason
    detail: str = ""
    claim: bool = False
    seen_heartbeat: str | None = None


@dataclass
class InstanceTermination:
    terminated: dict[EndReason, list[str]] = field(default_factory=lambda: defaultdict(list))
    released: int = 0  # quota units given back
    skipped: list[str] = field(default_factory=list)  # a heartbeat landed before the claim
    annexes_ended: list[str] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)


def terminate_instances(
    store: AnnexStore,
    ec2: Ec2,
    targets: Sequence[InstanceTarget],
    *,
    actor: str,
    now: datetime,
    retention: timedelta,
) -> InstanceTermination:
    """Claim, terminate (batched), record with the quota unit back, and end emptied annexes."""
    out = InstanceTermination()
    claimed: list[InstanceTarget] = []
    for target in targets:
        if target.claim and target.annex is not None and target.annex.live:
            try:
                won = store.begin_instance_termination(
                    target.annex_id,
                    target.instance_id,
                    reason=target.reason,
                    seen_heartbeat=target.seen_heartbeat,
                )
            except Exception as exc:
                log.exception("could not claim instance %s", target.instance_id)
                out.failures[target.instance_id] = exc
                continue
            if not won:
                out.skipped.append(target.instance_id)
                continue
        claimed.append(target)
    if not claimed:
        return out
    ec2.terminate([t.instance_id for t in claimed])
    touched: dict[str, Annex] = {}
    for target in claimed:
        try:
            _record(store, target, actor=actor, now=now, retention=retention, out=out)
        except Exception as exc:
            log.exception("could not record the termination of %s", target.instance_id)
            out.failures[target.instance_id] = exc
            continue
        out.terminated[target.reason].append(target.instance_id)
        if target.annex is not None and target.annex.state is AnnexState.RUNNING:
            touched[target.annex_id] = target.annex
    for annex_id in sorted(touched):
        try:
            if _end_if_empty(store, ec2, annex_id, actor=actor, now=now, retention=retention):
                out.annexes_ended.append(annex_id)
        except Exception as exc:
            log.exception("could not end emptied annex %s", annex_id)
            out.failures[annex_id] = exc
    return out


def _record(
    store: AnnexStore,
    target: InstanceTarget,
    *,
    actor: str,
    now: datetime,
    retention: timedelta,
    out: InstanceTermination,
) -> None:
    if target.annex is None or not target.annex.live:
        # The annex has ended (or is gone): end_annex gave back everything it held.
        reason = (target.annex.end_reason if target.annex else None) or target.reason
        store.mark_instances_ended(
            target.annex_id, [target.instance_id], reason=reason, now=now, retention=retention
        )
        return
    result = store.end_instance(
        target.annex_id,
        target.instance_id,
        owner=target.annex.owner,
        reason=target.reason,
        now=now,
        actor=actor,
        retention=retention,
        detail=target.detail,
    )
    if result is InstanceEnd.RELEASED:
        out.released += 1


def _end_if_empty(
    store: AnnexStore, ec2: Ec2, annex_id: str, *, actor: str, now: datetime, retention: timedelta
) -> bool:
    """A running annex with no live instance left has nothing to do: end it (all-instances-gone).

    `held` is the cheap first test (one read): once launch has finished it counts the annex's live
    instances, since launch gives back the units of instances it could not start and each terminated
    instance gives back its own. Only at zero are the instance records read to confirm."""
    item = store.get_annex_item(annex_id)
    if item is None or annex_from_item(item).state is not AnnexState.RUNNING or int(item.get("held", 0)) > 0:
        return False
    if any(i.state is not InstanceState.TERMINATED for i in store.list_instances(annex_id)):
        return False
    result = end_and_terminate(
        store,
        ec2,
        annex_id,
        reason=EndReason.ALL_INSTANCES_GONE,
        actor=actor,
        now=now,
        retention=retention,
        detail="its last instance was terminated",
    )
    return result.ended_now
