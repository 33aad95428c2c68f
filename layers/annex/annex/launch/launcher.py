"""Launch: turn a requested annex into tagged, recorded EC2 capacity, exactly once.

Exactly once, in three layers:
1. The record: `requested -> launching` is a conditional write. A delivery that finds the annex
   `running` does nothing; one that finds it `ended`/`failed` only terminates what may be left of it.
2. Resuming: a delivery that finds it `launching` (the last run crashed) counts what the annex already
   has, recorded or only tagged in EC2, and launches the remainder.
3. EC2: every call carries a client token derived from (annex, offset, slot, count). A retry that
   repeats a call whose instances EC2 does not list yet repeats the same token, and EC2 answers with the
   first call's instances instead of launching more.

Instances are recorded (with their reap time) batch by batch as they launch, before the annex moves to
`running`; if the annex was stopped meanwhile, everything launched is terminated.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from annex.aws.inventory import TAG_ID, TAG_STACK, Ec2Inventory
from annex.aws.pool_token import PoolTokenParameter
from annex.core.config import LaunchSettings
from annex.core.errors import AnnexNotFound, CapacityUnavailable, LaunchRejected
from annex.core.models import (
    LIVE_INSTANCE_STATES,
    Annex,
    AnnexState,
    EndReason,
    Market,
)
from annex.failsafe.lease_tag import keep_lease_tag
from annex.launch.capacity import (
    NEVER_HERE_CODES,
    Ec2Capacity,
    InstanceSpec,
    Launched,
    Refusal,
    Slot,
)
from annex.launch.plan import (
    LaunchOutcome,
    annex_tags,
    batch_sizes,
    client_token,
    launch_note,
    ordered_subnets,
)
from annex.launch.userdata import NodeConfig, render_user_data
from annex.store import AnnexStore

if TYPE_CHECKING:
    from annex.failsafe.termination import Termination

ACTOR = "launch"
MISSING_TOKEN_NOTE = (
    "the pool token parameter {name} does not exist: an administrator must store a token made with "
    "condor_token_create (aws ssm put-parameter --type SecureString; see the README's deploy guide). "
    "Nothing was launched."
)


@dataclass
class _Run:
    """What one launch run did."""

    launched: list[Launched] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    stopped: bool = False


# --- the launcher -------------------------------------------------------------------------------


class Launcher:
    def __init__(
        self,
        store: AnnexStore,
        ec2: Ec2Inventory,
        capacity: Ec2Capacity,
        settings: LaunchSettings,
        pool_token: PoolTokenParameter | None = None,
    ) -> None:
        self.store = store
        self.ec2 = ec2
        self.capacity = capacity
        self.settings = settings
        self.pool_token = pool_token  # None: not checked (an instance without a token powers off)
        self._zones: dict[str, str] | None = None  # subnet -> zone, read once per container

    def launch(self, annex_id: str, *, now: datetime) -> LaunchOutcome:
        """Bring the annex to `running` with its instances (or `failed` with none). Safe to repeat."""
        try:
            annex = self.store.get_annex(annex_id)
        except AnnexNotFound:
            return LaunchOutcome(annex_id, "not-found", note="no such annex (deleted after it ended)")
        if annex.state is AnnexState.REQUESTED:
            claimed = self.store.set_state(
                annex.id,
                expected=[AnnexState.REQUESTED],
                new_state=AnnexState.LAUNCHING,
                now=now,
                actor=ACTOR,
                detail=f"launching {annex.count} x {'/'.join(annex.instance_types)} {annex.market.value}",
            )
            annex = (
                annex.model_copy(update={"state": AnnexState.LAUNCHING})
                if claimed
                else self.store.get_annex(annex_id)
            )
        if annex.state is AnnexState.LAUNCHING:
            return self._launch(annex, now)
        if annex.state is AnnexState.RUNNING:
            return LaunchOutcome(annex.id, "duplicate", requested=annex.count, launched=annex.launched_count)
        # Ended or failed: a launch that crashed before it could see the stop may have left instances.
        terminated = self._terminate_all(annex, now)
        return LaunchOutcome(annex.id, "ended", requested=annex.count, terminated=terminated)

    # --- one run ----------------------------------------------------------------------------------

    def _launch(self, annex: Annex, now: datetime) -> LaunchOutcome:
        missing = self.settings.missing()
        if missing:
            note = (
                f"Annex is not configured for launching: template parameter(s) {', '.join(missing)} "
                "are empty; the administrator must set them (see docs/launch.md)"
            )
            return self._fail(annex, now, note, config_errors=1)
        if self.pool_token is not None and self.pool_token.missing():
            # Every instance would boot, find no token, and power off unjoined: launch none.
            note = MISSING_TOKEN_NOTE.format(name=self.pool_token.name)
            return self._fail(annex, now, note, config_errors=1)  # LaunchConfigErrorsAlarm
        if annex.lease_expires_at <= now:
            detail = "the lease ended before the annex could launch"
            terminated = len(self._end(annex.id, EndReason.LEASE_EXPIRED, now, detail).instance_ids)
            return LaunchOutcome(annex.id, "ended", requested=annex.count, terminated=terminated)

        have = self._adopt(annex, now)
        run = _Run()
        if len(have) < annex.count:
            try:
                if annex.market is Market.SPOT:
                    self._launch_spot(annex, offset=len(have), now=now, run=run)
                else:
                    self._launch_on_demand(annex, offset=len(have), now=now, run=run)
            except LaunchRejected as exc:  # before any call could launch: the subnets themselves
                run.refusals.append(Refusal(exc.ec2_code, exc.message, None, None))
        instance_ids = [*have, *(i.instance_id for i in run.launched)]
        if len(instance_ids) > annex.count:
            self._trim(annex, instance_ids, now)
        total = len(instance_ids)
        config_errors = sum(1 for r in run.refusals if not r.capacity)
        note = launch_note(annex.count, total, run.refusals)
        if run.stopped or not self._still_launching(annex.id):
            return self._left_launching(annex, now, run, note, config_errors)
        if total == 0:
            return self._fail(annex, now, note, config_errors=config_errors)
        moved = self.store.set_state(
            annex.id,
            expected=[AnnexState.LAUNCHING],
            new_state=AnnexState.RUNNING,
            now=now,
            actor=ACTOR,
            detail=note,
            launched_count=total,
            launch_note=note,
            release=annex.count - total,
            owner=annex.owner,
        )
        if not moved:  # it changed between the last check and now
            return self._left_launching(annex, now, run, note, config_errors)
        self._retag_if_extended(annex, instance_ids)
        return LaunchOutcome(
            annex.id,
            "running" if total == annex.count else "partial",
            requested=annex.count,
            launched=total,
            launched_now=len(run.launched),
            config_errors=config_errors,
            note=note,
        )

    def _left_launching(
        self, annex: Annex, now: datetime, run: _Run, note: str, config_errors: int
    ) -> LaunchOutcome:
        """Someone else moved the annex on while this run launched. Stopped or expired: nothing of it
        may keep running. Running: a concurrent delivery finished it; its instances are its own."""
        current = self.store.get_annex(annex.id)
        if current.live:
            return LaunchOutcome(
                annex.id, "duplicate", requested=annex.count, launched=current.launched_count, note=note
            )
        terminated = self._terminate_all(current, now)
        return LaunchOutcome(
            annex.id,
            "stopped",
            requested=annex.count,
            launched_now=len(run.launched),
            terminated=terminated,
            config_errors=config_errors,
            note=note,
        )

    def _adopt(self, annex: Annex, now: datetime) -> list[str]:
        """The instances the annex already has: recorded, or only tagged by a run that crashed before
        recording them (those are recorded now). Resuming launches only the rest."""
        recorded = {
            i.instance_id for i in self.store.list_instances(annex.id) if i.state in LIVE_INSTANCE_STATES
        }
        orphans = [
            Launched(
                t.instance_id,
                t.instance_type or annex.instance_types[0],
                t.zone,
                annex.market.value,
                t.launch_time,
            )
            for t in self.ec2.live_instances(annex.id)
            if t.instance_id not in recorded
        ]
        self._record(annex, orphans, now)
        return sorted(recorded | {o.instance_id for o in orphans})

    def _trim(self, annex: Annex, instance_ids: list[str], now: datetime) -> None:
        """More instances than asked for must never run: terminate the surplus (the newest first)."""
        surplus = instance_ids[annex.count :]
        self.ec2.terminate(surplus)
        self.store.mark_instances_ended(
            annex.id, surplus, reason=EndReason.ORPHAN, now=now, retention=self.settings.retention
        )
        del instance_ids[annex.count :]

    def spec(self, annex: Annex) -> InstanceSpec:
        return InstanceSpec(
            image_id=self.settings.image_id,
            instance_profile_arn=self.settings.instance_profile_arn,
            security_group_id=self.settings.security_group_id,
            user_data=render_user_data(NodeConfig.for_annex(annex, self.settings)),
            tags=annex_tags(annex, self.settings.stack_name),
        )

    def slots(self, annex: Annex) -> list[Slot]:
        if self._zones is None:
            self._zones = self.capacity.subnet_zones(self.settings.subnet_ids)
        zones = self._zones
        subnets = ordered_subnets(annex.id, self.settings.subnet_ids)
        return [
            Slot(itype, subnet, zones.get(subnet, subnet))
            for itype in annex.instance_types
            for subnet in subnets
        ]

    def _launch_on_demand(self, annex: Annex, *, offset: int, now: datetime, run: _Run) -> None:
        """RunInstances in batches of at most 100 (MinCount = MaxCount). A batch no slot can take is
        halved and tried again, so capacity spread over zones is still found; a slot that refused n
        instances is not asked for n or more again in this run."""
        spec, slots = self.spec(annex), self.slots(annex)
        refused: dict[Slot, int] = {}  # slot -> smallest count it refused
        queue = deque(batch_sizes(annex.count - offset))
        while queue:
            count = queue.popleft()
            launched: list[Launched] | None = None
            for slot in slots:
                if refused.get(slot, count + 1) <= count:
                    continue
                token = client_token(annex.id, offset, slot.instance_type, slot.subnet_id, count)
                try:
                    launched = self.capacity.run_instances(spec, slot, count, token)
                except (CapacityUnavailable, LaunchRejected) as exc:
                    permanent = isinstance(exc, LaunchRejected) or exc.ec2_code in NEVER_HERE_CODES
                    refused[slot] = 0 if permanent else count
                    run.refusals.append(Refusal(exc.ec2_code, exc.message, slot.instance_type, slot.zone))
                    continue
                break
            if launched is None:
                if count == 1:
                    return  # not one more instance fits anywhere
                queue.extendleft([count // 2, count - count // 2])  # the larger half first
                continue
            self._record(annex, launched, now)
            run.launched.extend(launched)
            offset += len(launched)
            if queue and not self._still_launching(annex.id):
                run.stopped = True
                return

    def _launch_spot(self, annex: Annex, *, offset: int, now: datetime, run: _Run) -> None:
        """EC2 Fleet `instant`, capacity-optimized across every allowed type in every subnet, in calls of
        at most 100. A call that gets fewer than it asked for means the pools are drained: stop there."""
        spec, slots = self.spec(annex), self.slots(annex)
        template = f"annex-{annex.id}"
        owner_tags = {TAG_STACK: self.settings.stack_name, TAG_ID: annex.id}
        self.capacity.create_launch_template(template, spec, owner_tags)
        try:
            queue = deque(batch_sizes(annex.count - offset))
            while queue:
                count = queue.popleft()
                token = client_token(annex.id, offset, "fleet", count)
                try:
                    result = self.capacity.create_fleet(template, slots, count, token, owner_tags)
                except (CapacityUnavailable, LaunchRejected) as exc:
                    run.refusals.append(Refusal(exc.ec2_code, exc.message, None, None))
                    return
                self._record(annex, result.launched, now)
                run.launched.extend(result.launched)
                run.refusals.extend(result.refusals)
                offset += len(result.launched)
                if len(result.launched) < count:
                    return
                if queue and not self._still_launching(annex.id):
                    run.stopped = True
                    return
        finally:
            self.capacity.delete_launch_template(template)

    # --- records and cleanup ----------------------------------------------------------------------

    def _record(self, annex: Annex, launched: Sequence[Launched], now: datetime) -> None:
        """Instance records with their reap time (launch + boot grace), written as soon as EC2 answers."""
        if not launched:
            return
        at = max([now, *(i.launch_time for i in launched if i.launch_time)])
        instances = [i.record(annex.id, at) for i in launched]
        self.store.put_instances(instances, reap_at=at + self.settings.boot_grace)

    def _still_launching(self, annex_id: str) -> bool:
        return self.store.get_annex(annex_id).state is AnnexState.LAUNCHING

    def _fail(self, annex: Annex, now: datetime, note: str, *, config_errors: int) -> LaunchOutcome:
        """No capacity: the annex ends FAILED with the reason, its quota returns, nothing runs."""
        result = self._end(annex.id, EndReason.LAUNCH_FAILED, now, note, final_state=AnnexState.FAILED)
        return LaunchOutcome(
            annex.id,
            "failed",
            requested=annex.count,
            terminated=len(result.instance_ids),
            config_errors=config_errors,
            note=note if result.annexes_ended else "already ended",
        )

    def _terminate_all(self, annex: Annex, now: datetime) -> int:
        """Terminate what may be left of an annex that has ended (the record is left as it is)."""
        return len(self._end(annex.id, annex.end_reason or EndReason.STOPPED, now).instance_ids)

    def _end(
        self,
        annex_id: str,
        reason: EndReason,
        now: datetime,
        detail: str = "",
        *,
        final_state: AnnexState = AnnexState.ENDED,
    ) -> Termination:
        """The annex ends (if still live) and every instance it may have is terminated."""
        # Only a launch that fails, or finds its annex ended, ends one: ~2.5 ms of cold start.
        from annex.failsafe.termination import end_annexes  # noqa: PLC0415 (cold start: end paths only)

        return end_annexes(
            self.store,
            self.ec2,
            [annex_id],
            reason=reason,
            actor=ACTOR,
            now=now,
            retention=self.settings.retention,
            detail=detail,
            final_state=final_state,
        ).raise_failures()

    def _retag_if_extended(self, launched_with: Annex, instance_ids: Sequence[str]) -> None:
        """The lease tag was written from the record read at the start; an extension that landed during
        the launch moved the record (and the tags EC2 listed then), so bring these tags up to date."""
        current = self.store.get_annex(launched_with.id)
        if current.lease_expires_at != launched_with.lease_expires_at and instance_ids:
            keep_lease_tag(self.ec2, current, instance_ids)
