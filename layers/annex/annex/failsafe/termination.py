"""The one termination path, two verbs. `stop`, launch, lease-check, idle-reap and the orphan sweep all
converge here, and each step is idempotent: running it again after a crash finishes what the last run
started. Both return a `Termination`.

- `end_annexes`: end each annex's record first (so nothing new launches for it and its quota comes
  back), then mark its instance records, then TerminateInstances for every instance on record or tagged
  with its id (one DescribeInstances per 200 annexes, one TerminateInstances per 500 instances). A crash
  after the first step leaves an ended annex with running instances: the orphan sweep terminates exactly
  those (and marks their records) on its next run.
- `reap_instances` (idle-reap, the orphan sweep): claim each record (`terminating`, still in the `due`
  index), TerminateInstances, then record each termination and give its quota unit back in one
  transaction. A crash before the last step leaves the claim due: the next idle-reap finishes it, and the
  conditional transaction releases the unit exactly once. An annex whose last instance went ends too
  (reason all-instances-gone), through `end_annexes`.

Both verbs run their per-annex and per-instance store transactions on `workers` (annex.failsafe.workers:
bounded threads, SERIAL by default); EC2 calls stay on the caller's thread, batched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from annex.aws.inventory import Ec2Inventory
from annex.core.errors import LeaseNotDue
from annex.core.models import Annex, AnnexState, EndReason, InstanceState
from annex.failsafe.workers import SERIAL, Workers
from annex.store import AnnexStore, HeartbeatVersion, InstanceEnd, InstanceKey

log = logging.getLogger(__name__)


@dataclass
class Termination:
    """What a termination did. One annex or instance failing does not stop the others."""

    terminated: dict[EndReason, list[str]] = field(default_factory=dict)  # instance ids, by reason
    annexes_ended: list[str] = field(default_factory=list)  # ended by this call
    released: int = 0  # quota units given back one instance at a time
    skipped: list[str] = field(default_factory=list)  # annexes extended / instances heard from since read
    failures: dict[str, Exception] = field(default_factory=dict)  # by annex or instance id

    @property
    def instance_ids(self) -> list[str]:
        return [i for ids in self.terminated.values() for i in ids]

    def add_terminated(self, reason: EndReason, instance_ids: Iterable[str]) -> None:
        ids = list(instance_ids)
        if ids:
            self.terminated.setdefault(reason, []).extend(ids)

    def raise_failures(self) -> Termination:
        """For a caller acting on one annex: its failure, raised."""
        for exc in self.failures.values():
            raise exc
        return self


# --- whole annexes ------------------------------------------------------------------------------------


def end_annexes(
    store: AnnexStore,
    ec2: Ec2Inventory,
    annex_ids: Iterable[str],
    *,
    reason: EndReason,
    actor: str,
    now: datetime,
    retention: timedelta,
    detail: str = "",
    due_by: datetime | None = None,
    final_state: AnnexState = AnnexState.ENDED,
    workers: Workers = SERIAL,
) -> Termination:
    """End each annex (if still live), then terminate every instance they may have. Safe to repeat: an
    annex that has already ended only has its instances terminated. With `due_by` (the lease-check), an
    annex whose lease was extended past it since the index was read is left alone (`skipped`)."""
    out = Termination()
    annexes: list[Annex] = []

    def end_one(annex_id: str) -> tuple[Annex, bool]:
        ended = store.end_annex(
            annex_id,
            reason=reason,
            now=now,
            actor=actor,
            retention=retention,
            detail=detail,
            due_by=due_by,
            final_state=final_state,
        )
        return (ended or store.get_annex(annex_id)), ended is not None

    for outcome in workers.map(end_one, list(annex_ids)):
        if isinstance(outcome.error, LeaseNotDue):
            out.skipped.append(outcome.item)
        elif outcome.error is not None:  # one bad record must not keep the others running
            log.error("could not end annex %s", outcome.item, exc_info=outcome.error)
            out.failures[outcome.item] = outcome.error
        elif outcome.result is not None:
            annex, ended_now = outcome.result
            annexes.append(annex)
            if ended_now:
                out.annexes_ended.append(outcome.item)
    out.add_terminated(
        reason,
        _terminate_annexes(store, ec2, annexes, reason=reason, now=now, retention=retention, workers=workers),
    )
    return out


def _terminate_annexes(
    store: AnnexStore,
    ec2: Ec2Inventory,
    annexes: Sequence[Annex],
    *,
    reason: EndReason,
    now: datetime,
    retention: timedelta,
    workers: Workers,
) -> list[str]:
    """Mark the instance records of these (ended) annexes, then terminate their instances: those on
    record and those EC2 knows by tag (a record may not have been written yet when a launch was
    interrupted). Returns the instances EC2 accepted to terminate."""
    if not annexes:
        return []

    def live_records(annex: Annex) -> list[str]:
        return [
            i.instance_id for i in store.list_instances(annex.id) if i.state is not InstanceState.TERMINATED
        ]

    recorded: dict[str, list[str]] = {}
    for outcome in workers.map(live_records, annexes):
        if outcome.error is not None:
            raise outcome.error
        recorded[outcome.item.id] = outcome.result or []
    targets: dict[str, set[str]] = {a.id: set(recorded[a.id]) for a in annexes}
    for tagged in ec2.live_instances_of(targets):
        if tagged.annex_id in targets:
            targets[tagged.annex_id].add(tagged.instance_id)

    # Mark the records first: a crash after this leaves running instances of an ended annex, which the
    # orphan sweep terminates. (Marking after TerminateInstances would leave live records of terminated
    # instances that no sweep of this annex would visit again.) Records whose instance EC2 no longer
    # knows are ended too: there is nothing left to stop.
    def mark(annex: Annex) -> None:
        store.mark_instances_ended(
            annex.id,
            sorted(recorded[annex.id]),
            reason=annex.end_reason or reason,
            now=now,
            retention=retention,
        )

    for marking in workers.map(mark, annexes):
        if marking.error is not None:
            raise marking.error
    every = sorted(i for ids in targets.values() for i in ids)
    accepted = set(ec2.terminate(every)) if every else set()
    return [i for i in every if i in accepted]


# --- single instances (idle-reap, orphan sweep) ---------------------------------------------------


@dataclass(frozen=True)
class InstanceTarget:
    """An instance to terminate. `annex` is its annex record as read (None when the record is gone).

    `claim`: first mark the record `terminating`, conditional on no heartbeat having landed since the
    version `seen` (idle-reap decides from that heartbeat). False when the reason does not depend on
    heartbeats (a passed lease tag) or the record is already claimed."""

    key: InstanceKey
    annex: Annex | None
    reason: EndReason
    detail: str = ""
    claim: bool = False
    seen: HeartbeatVersion = field(default_factory=HeartbeatVersion)

    @property
    def instance_id(self) -> str:
        return self.key.instance_id


def reap_instances(
    store: AnnexStore,
    ec2: Ec2Inventory,
    targets: Sequence[InstanceTarget],
    *,
    actor: str,
    now: datetime,
    retention: timedelta,
    workers: Workers = SERIAL,
) -> Termination:
    """Claim, terminate (batched), record with the quota unit back, and end emptied annexes."""
    out = Termination()

    def claim(target: InstanceTarget) -> bool:
        if target.claim and target.annex is not None and target.annex.live:
            return store.claim_for_termination(target.key, reason=target.reason, seen=target.seen)
        return True

    claimed: list[InstanceTarget] = []
    for claiming in workers.map(claim, targets):
        if claiming.error is not None:
            log.error("could not claim instance %s", claiming.item.instance_id, exc_info=claiming.error)
            out.failures[claiming.item.instance_id] = claiming.error
        elif not claiming.result:
            out.skipped.append(claiming.item.instance_id)
        else:
            claimed.append(claiming.item)
    if not claimed:
        return out
    ec2.terminate([t.instance_id for t in claimed])

    def record(target: InstanceTarget) -> bool:
        return _record(store, target, actor=actor, now=now, retention=retention)

    touched: set[str] = set()
    for recording in workers.map(record, claimed):
        target = recording.item
        if recording.error is not None:
            log.error("could not record the termination of %s", target.instance_id, exc_info=recording.error)
            out.failures[target.instance_id] = recording.error
            continue
        if recording.result:
            out.released += 1
        out.add_terminated(target.reason, [target.instance_id])
        if target.annex is not None and target.annex.state is AnnexState.RUNNING:
            touched.add(target.key.annex_id)

    def end_if_empty(annex_id: str) -> bool:
        return _end_if_empty(store, ec2, annex_id, actor=actor, now=now, retention=retention)

    # EC2 calls stay on this thread: an emptied annex has nothing left to terminate, so ending it is
    # store work only (its DescribeInstances finds nothing), but it is done one at a time all the same.
    for ending in SERIAL.map(end_if_empty, sorted(touched)):
        if ending.error is not None:
            log.error("could not end emptied annex %s", ending.item, exc_info=ending.error)
            out.failures[ending.item] = ending.error
        elif ending.result:
            out.annexes_ended.append(ending.item)
    return out


def _record(
    store: AnnexStore,
    target: InstanceTarget,
    *,
    actor: str,
    now: datetime,
    retention: timedelta,
) -> bool:
    """Record one termination; True when its quota unit came back."""
    if target.annex is None or not target.annex.live:
        # The annex has ended (or is gone): end_annex gave back everything it held.
        reason = (target.annex.end_reason if target.annex else None) or target.reason
        store.mark_instances_ended(
            target.key.annex_id, [target.instance_id], reason=reason, now=now, retention=retention
        )
        return False
    result = store.end_instance(
        target.key,
        owner=target.annex.owner,
        reason=target.reason,
        now=now,
        actor=actor,
        retention=retention,
        detail=target.detail,
    )
    return result is InstanceEnd.RELEASED


def _end_if_empty(
    store: AnnexStore, ec2: Ec2Inventory, annex_id: str, *, actor: str, now: datetime, retention: timedelta
) -> bool:
    """A running annex with no live instance left has nothing to do: end it (all-instances-gone).

    The units it holds are the cheap first test (one read): once launch has finished they count the
    annex's live instances, since launch gives back the units of instances it could not start and each
    terminated instance gives back its own. Only at zero are the instance records read to confirm."""
    record = store.get_annex_record(annex_id)
    if record is None or record.annex.state is not AnnexState.RUNNING or record.held > 0:
        return False
    if any(i.state is not InstanceState.TERMINATED for i in store.list_instances(annex_id)):
        return False
    result = end_annexes(
        store,
        ec2,
        [annex_id],
        reason=EndReason.ALL_INSTANCES_GONE,
        actor=actor,
        now=now,
        retention=retention,
        detail="its last instance was terminated",
    ).raise_failures()
    return annex_id in result.annexes_ended


def end_expired_leases(
    store: AnnexStore,
    ec2: Ec2Inventory,
    annex_ids: Sequence[str],
    *,
    actor: str,
    now: datetime,
    retention: timedelta,
    workers: Workers = SERIAL,
) -> Termination:
    """End annexes whose lease has passed by `now` (lease-check's sweep and the lease timers alike): an
    annex extended meanwhile is skipped by `due_by`."""
    return end_annexes(
        store,
        ec2,
        annex_ids,
        reason=EndReason.LEASE_EXPIRED,
        actor=actor,
        now=now,
        retention=retention,
        detail="the lease expired",
        due_by=now,
        workers=workers,
    )
