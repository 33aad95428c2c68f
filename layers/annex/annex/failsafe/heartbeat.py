"""The heartbeat: what each instance's agent reports every minute, and the answer it obeys.

The answer carries the lease expiry (the instance's own dead-man switch enforces it a second time) and an
action: run, drain (finish running jobs, take no new ones) or terminate (power off now).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from annex.core.auth import authorize_instance_report
from annex.core.clock import format_duration, to_iso
from annex.core.config import HeartbeatSettings
from annex.core.errors import ConcurrentUpdate, Forbidden
from annex.core.models import (
    LIVE_INSTANCE_STATES,
    Annex,
    HeartbeatAction,
    HeartbeatRequest,
    HeartbeatResponse,
    Instance,
    InstanceState,
    SpotNotice,
)
from annex.failsafe.rules import (
    idle_after,
    idle_since_after_report,
    needs_refresh,
    next_check,
    stored_check,
)
from annex.store import AnnexStore, InstanceKey, InstanceRecord

_ATTEMPTS = 3


def answer(
    annex: Annex | None, instance: Instance, *, now: datetime, drain_lead: timedelta
) -> HeartbeatResponse:
    """What the instance must do, given its annex and its own record (after this report)."""
    if annex is None:
        return HeartbeatResponse(action=HeartbeatAction.TERMINATE, reason="the annex no longer exists")
    lease = annex.lease_expires_at
    if not annex.live:
        why = f" ({annex.end_reason.value})" if annex.end_reason else ""
        return _terminate(lease, f"the annex has {annex.state.value}{why}")
    if instance.state not in LIVE_INSTANCE_STATES:
        why = f" ({instance.end_reason.value})" if instance.end_reason else ""
        return _terminate(lease, f"this instance is {instance.state.value}{why}")
    if instance.problem is not None:
        return _terminate(lease, f"it reported a boot problem: {instance.problem}")
    if lease <= now:
        return _terminate(lease, f"the lease ended at {to_iso(lease)}")
    if instance.spot_notice is not None:
        return HeartbeatResponse(
            action=HeartbeatAction.DRAIN,
            lease_expires_at=lease,
            reason=f"EC2 sent a spot {instance.spot_notice.value} notice for this instance",
        )
    if lease - now <= drain_lead:
        return HeartbeatResponse(
            action=HeartbeatAction.DRAIN,
            lease_expires_at=lease,
            reason=f"the lease ends at {to_iso(lease)}, within {format_duration(drain_lead)}",
        )
    idle_deadline = idle_after(instance, annex.idle_timeout)
    if idle_deadline is not None and idle_deadline <= now:
        return HeartbeatResponse(
            action=HeartbeatAction.DRAIN,
            lease_expires_at=lease,
            reason=f"idle past the idle timeout of {format_duration(annex.idle_timeout)}",
        )
    return HeartbeatResponse(action=HeartbeatAction.RUN, lease_expires_at=lease)


def _terminate(lease: datetime, reason: str) -> HeartbeatResponse:
    return HeartbeatResponse(action=HeartbeatAction.TERMINATE, lease_expires_at=lease, reason=reason)


class HeartbeatService:
    def __init__(self, store: AnnexStore, settings: HeartbeatSettings) -> None:
        self.store = store
        self.settings = settings

    def report(
        self, caller_arn: str | None, request: HeartbeatRequest, *, now: datetime
    ) -> HeartbeatResponse:
        """Authorize, record (at most one conditional write, after one batched read) and answer.

        Forbidden (403, nothing written) unless the caller is the instance itself and the instance is
        recorded in that annex. An instance of an ended or missing annex is told to terminate, and
        nothing is written. A duplicate or late report (no later than the last one recorded) writes
        nothing and gets the current answer. A report that changes nothing stored writes nothing either
        while the stored last-seen time is younger than R (`rules.refresh_interval`): the answer is the
        same as if it had written (it is computed from the annex read now and the reported state).
        """
        authorize_instance_report(
            caller_arn, role_name=self.settings.instance_role_name, instance_id=request.instance_id
        )
        key = InstanceKey(request.annex_id, request.instance_id)
        for attempt in range(_ATTEMPTS):
            # The first read is eventually consistent (half the read units): the write below is
            # conditional on what was read, so a stale read only costs a retry, which reads consistently.
            instances, annexes = self.store.get_instances_with_annexes([key], consistent=attempt > 0)
            record = instances.get(key)
            if record is None and attempt == 0:
                continue  # a record just written may be missing from an eventually consistent read
            if record is None:
                raise Forbidden(f"instance {request.instance_id} is not part of annex {request.annex_id}")
            instance = record.instance
            found = annexes.get(request.annex_id)
            annex = found.annex if found else None
            if annex is None or not annex.live or instance.state not in LIVE_INSTANCE_STATES:
                return answer(annex, instance, now=now, drain_lead=self.settings.drain_lead)
            seen = instance.last_heartbeat_at
            if seen is not None and seen >= now:
                return answer(annex, instance, now=now, drain_lead=self.settings.drain_lead)
            reported = instance.model_copy(
                update={
                    "state": InstanceState.RUNNING,
                    "last_heartbeat_at": now,
                    "claimed_slots": request.claimed_slots,
                    "total_slots": request.total_slots,
                    "idle_since": idle_since_after_report(instance.idle_since, request.claimed_slots, now),
                    "problem": request.problem or instance.problem,
                }
            )
            notice = SpotNotice(request.spot_notice) if request.spot_notice is not None else None
            if not self._must_write(record, reported, notice, annex, now=now):
                # Nothing stored would change and the stored last-seen time is recent enough: answer
                # from what was read (the annex is read on every report), write nothing.
                return answer(annex, reported, now=now, drain_lead=self.settings.drain_lead)
            written = self.store.apply_heartbeat(
                key,
                now=now,
                claimed_slots=request.claimed_slots,
                total_slots=request.total_slots,
                idle_since=reported.idle_since,
                due_at=stored_check(
                    record.due_at,
                    next_check(reported, annex.idle_timeout, self.settings),
                    now=now,
                    timing=self.settings,
                    refreshed=now,
                ),
                seen=record.heartbeat,
                seen_due=record.due_at,
                problem=request.problem,
            )
            if written and request.problem is not None and request.problem != instance.problem:
                self.store.add_problem_event(key, problem=request.problem, now=now)
            if written and notice is not None:
                reported = self._spot_notice(key, reported, notice, now)
            if written:
                return answer(annex, reported, now=now, drain_lead=self.settings.drain_lead)
            # Another report or a sweep changed the record between the read and the write: read again.
        raise ConcurrentUpdate(f"instance {request.instance_id} kept changing; report again")

    def _must_write(
        self,
        record: InstanceRecord,
        reported: Instance,
        notice: SpotNotice | None,
        annex: Annex,
        *,
        now: datetime,
    ) -> bool:
        """Whether this report must write: it changes what is stored (state, slots, idle_since, a
        problem, a new spot notice), the stored last-seen time is R old (`needs_refresh`), or the
        record's `due` entry must move even though nothing else does."""
        stored = record.instance
        fields = ("state", "claimed_slots", "total_slots", "idle_since", "problem")
        if any(getattr(stored, f) != getattr(reported, f) for f in fields):
            return True
        if notice is not None and not _known_notice(stored, notice):
            return True
        seen = stored.last_heartbeat_at
        if seen is None or needs_refresh(seen, now=now, timing=self.settings):
            return True
        kept = stored_check(
            record.due_at,
            next_check(stored, annex.idle_timeout, self.settings),
            now=now,
            timing=self.settings,
            refreshed=seen,
        )
        return kept is not None

    def _spot_notice(
        self, key: InstanceKey, instance: Instance, notice: SpotNotice, now: datetime
    ) -> Instance:
        """The instance saw a spot notice in its metadata (IMDS): recorded as EC2's event would be (once,
        whichever arrives first), and the answer drains it."""
        if _known_notice(instance, notice):
            return instance  # already known (a stronger or the same notice): nothing to write
        # Only a heartbeat that brings a new spot notice needs it (cold start: EC2's event models).
        from annex.failsafe.interruption import record_notice  # noqa: PLC0415

        record_notice(
            self.store,
            key,
            notice,
            at=now,
            actor=key.instance_id,
            source=f"spot {notice.value} notice seen by the instance",
        )
        return instance.model_copy(update={"spot_notice": notice, "spot_notice_at": now})


def _known_notice(instance: Instance, notice: SpotNotice) -> bool:
    """The instance's record already holds this notice or a stronger one (an interruption warning)."""
    return instance.spot_notice is notice or instance.spot_notice is SpotNotice.INTERRUPTION
