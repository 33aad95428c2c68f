"""lease-check, every minute: end every annex whose lease has passed, then the orphan sweep.

1. Due leases come from the sparse `due` index (`due_kind` = "lease", `due_at` <= now): only live annexes
   carry it, so the cost grows with what is due, never with the table. Each is ended with reason
   lease-expired (whatever its state: requested and launching annexes past their lease too) and all
   their instances are terminated in batched calls, through the one termination path.
2. The orphan sweep does not trust the records: every not-terminated instance tagged with this stack is
   terminated if its annex has ended or is missing, or if its own lease tag has passed (or is missing or
   mangled). The tag is the last line of defence when a record is lost; it is also what finishes the
   work of a run that crashed between ending an annex and terminating its instances.

   Its cost does not grow with the fleet: the fleet is cut into `orphan_segments` parts by the last two
   hex digits of the `annex:id` tag (annex ids are `ax-` + 16 random hex digits, so the parts are even;
   EC2 filters the tag with wildcards, `ax-*3f`), and each run examines the part of its minute
   (minute since the epoch mod `orphan_segments`). Every instance is examined once every
   `orphan_segments` minutes; one run reads 1/orphan_segments of the instances and of their annex
   records (docs/failsafe.md has the figures at 100,000 instances). With one segment, a run examines every
   instance of the stack, whatever its `annex:id` tag.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from annex.aws.inventory import Ec2Inventory, TaggedInstance
from annex.core.models import Annex, EndReason
from annex.failsafe.sweeps import LEASE_CHECK, SweepReport
from annex.failsafe.termination import (
    InstanceTarget,
    Termination,
    end_expired_leases,
    reap_instances,
)
from annex.failsafe.workers import SERIAL, Workers
from annex.store import AnnexStore, InstanceKey

log = logging.getLogger(__name__)
ACTOR = "lease-check"
SEGMENT_BUCKETS = 256  # the last two hex digits of an annex id


def segment_of(now: datetime, segments: int) -> int:
    """The orphan-sweep segment a run at `now` examines: its minute since the epoch, mod `segments`."""
    return int(now.timestamp()) // 60 % segments


def segment_patterns(segment: int, segments: int) -> list[str]:
    """The `annex:id` tag patterns of one segment: a contiguous run of the 256 two-hex-digit endings (at
    most 128 values, under EC2's 200 values per filter for any `segments` >= 2)."""
    if not 2 <= segments <= SEGMENT_BUCKETS or not 0 <= segment < segments:
        raise ValueError(f"segment {segment} of {segments}")
    first, end = segment * SEGMENT_BUCKETS // segments, (segment + 1) * SEGMENT_BUCKETS // segments
    return [f"ax-*{bucket:02x}" for bucket in range(first, end)]


def run_lease_check(
    store: AnnexStore,
    ec2: Ec2Inventory,
    *,
    now: datetime,
    retention: timedelta,
    workers: Workers = SERIAL,
    orphan_segments: int = 1,
) -> SweepReport:
    """One run. Records its success (shown by GET /health) only if every step succeeded."""
    report = SweepReport.start(LEASE_CHECK, store, ec2)
    try:
        due = list(store.due_leases(now=now))
    except Exception as exc:
        log.exception("could not read the due leases")
        report.fail("due leases", exc)
        due = []
    report.due = len(due)
    if due:
        try:
            batch = end_expired_leases(
                store, ec2, due, actor=ACTOR, now=now, retention=retention, workers=workers
            )
        except Exception as exc:
            log.exception("could not terminate the instances of expired annexes")
            report.fail("expired leases", exc)
        else:
            report.absorb(batch)
    items_before, calls_before, started = store.items_read, ec2.calls, time.perf_counter()
    try:
        orphans = sweep_orphans(
            store, ec2, now=now, retention=retention, workers=workers, segments=orphan_segments
        )
    except Exception as exc:
        log.exception("the orphan sweep failed")
        report.fail("orphan sweep", exc)
    else:
        report.details.update(
            orphan_sweep_running=orphans.running,
            orphan_sweep_segment=orphans.segment,
            orphan_sweep_segments=orphan_segments,
            orphan_sweep_items_read=store.items_read - items_before,
            orphan_sweep_ec2_calls=ec2.calls - calls_before,
            orphan_sweep_ms=round((time.perf_counter() - started) * 1000),
        )
        report.absorb(orphans.termination)
    return report.close(store, ec2, now=now)


@dataclass
class OrphanSweep:
    running: int = 0
    segment: int = 0
    termination: Termination = field(default_factory=Termination)


def orphan_reason(tagged: TaggedInstance, annex: Annex | None, now: datetime) -> EndReason | None:
    """Why a running instance must go, or None if its annex is live and its lease tag is ahead."""
    if annex is None:
        return EndReason.ORPHAN
    if not annex.live:
        return annex.end_reason or EndReason.ORPHAN
    if tagged.lease_expires_at is None or tagged.lease_expires_at <= now:
        return EndReason.LEASE_EXPIRED
    return None


def sweep_orphans(
    store: AnnexStore,
    ec2: Ec2Inventory,
    *,
    now: datetime,
    retention: timedelta,
    workers: Workers = SERIAL,
    segments: int = 1,
) -> OrphanSweep:
    """The running instances of this stack in this run's segment against their annex records (one
    paginated DescribeInstances, the records batch-read 100 at a time) and their own lease tags."""
    segment = segment_of(now, segments)
    found = (
        ec2.live_instances_matching(segment_patterns(segment, segments))
        if segments > 1
        else ec2.live_instances()
    )
    running: Sequence[TaggedInstance] = list(found)
    records = store.get_annexes({t.annex_id for t in running if t.annex_id})
    sweep = OrphanSweep(running=len(running), segment=segment)
    unrecorded: list[str] = []
    targets: list[InstanceTarget] = []
    for tagged in running:
        record = records.get(tagged.annex_id) if tagged.annex_id else None
        annex = record.annex if record else None
        reason = orphan_reason(tagged, annex, now)
        if reason is None:
            continue
        if annex is None or tagged.annex_id is None:
            unrecorded.append(tagged.instance_id)
            continue
        if tagged.lease_expires_at is None:
            detail = "its lease tag is missing or unreadable (orphan sweep)"
        elif reason is EndReason.LEASE_EXPIRED:
            detail = "its lease tag has passed (orphan sweep)"
        else:
            detail = "its annex has ended (orphan sweep)"
        targets.append(
            InstanceTarget(
                key=InstanceKey(tagged.annex_id, tagged.instance_id),
                annex=annex,
                reason=reason,
                detail=detail,
            )
        )
    if unrecorded:
        log.warning("terminating instances no annex record accounts for", extra={"instances": unrecorded})
        ec2.terminate(unrecorded)
    if targets:
        sweep.termination = reap_instances(
            store, ec2, targets, actor=ACTOR, now=now, retention=retention, workers=workers
        )
    sweep.termination.add_terminated(EndReason.ORPHAN, unrecorded)
    return sweep
