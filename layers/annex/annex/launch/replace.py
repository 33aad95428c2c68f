"""Replacing spot instances EC2 interrupted, for annexes requested with `replace`.

The trigger is the interrupted record's end: the interruption function ends the record when EC2 reclaims
the instance (`spot-interrupted`), and that change reaches the launch function through the table's
stream, which retries it until it is handled (then a dead-letter queue, alarmed). If the reclaim event is
lost, idle-reap ends the silent record, and a silent end after an interruption warning is a trigger too.
A record ends once, so there is exactly one trigger per interruption; a repeated delivery finds the
record settled and does nothing. The replacement's progress is kept on the interrupted record:

1. decide: the annex must be running with a lease that ends after the drain lead, its budget must
   not be reached with the replacement running (the money package's check, `over_budget`, on the annex's
   cost with one more instance at the dearest allowed type), and the replacement is new spend that must
   fit the owner's monthly budget as a request must (`admit_new_spend`: one instance at the dearest
   allowed type until the lease ends); otherwise the record says why not, once;
2. claim: `replacement_claimed_at` is set in the transaction that takes one quota unit (the annex below
   its count, the owner's and the stack's limits), so at most one replacement is ever claimed;
3. launch one instance with the annex's own allocation (an instant capacity-optimized fleet across the
   allowed types and subnets), tagged `annex:replaces`, with a client token derived from the interrupted
   instance's id: a retry after a crash repeats the same token (EC2 answers with the first call's
   instance) and first adopts an instance of the annex that EC2 has and the table does not;
4. record it, then name it on the interrupted record (`replaced_by`) with the history event
   "i-new replaced i-old (spot interruption)"; no capacity: the unit goes back and the record says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from annex.aws.inventory import TAG_ID, TAG_STACK
from annex.core.clock import format_duration, to_iso
from annex.core.errors import CapacityUnavailable, LaunchRejected
from annex.core.models import (
    Annex,
    AnnexState,
    EndReason,
    Instance,
    InstanceState,
    Market,
    SpotNotice,
)
from annex.failsafe.termination import end_annexes
from annex.launch.capacity import Launched
from annex.launch.launcher import Launcher
from annex.launch.plan import client_token, launch_note
from annex.money.budgets import BudgetExceeded, over_budget
from annex.money.cost import annex_cost, request_cost, usd
from annex.money.service import admit_new_spend
from annex.store import InstanceKey, InstanceRecord, ReplacementClaim

ACTOR = "launch"
TAG_REPLACES = "annex:replaces"
# An instance id for the cost of a replacement not launched yet (never written anywhere).
_PLANNED = "i-00000000000000000"

Result = Literal["replaced", "declined", "failed", "settled", "not-asked", "stopped"]


@dataclass(frozen=True)
class ReplaceOutcome:
    interrupted: str
    result: Result
    replacement: str | None = None
    note: str = ""


class Replacer:
    """Replaces one interrupted instance, at most once (see the module's docstring)."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.store = launcher.store
        self.settings = launcher.settings

    def replace(self, key: InstanceKey, *, now: datetime) -> ReplaceOutcome:
        record = self.store.get_instance(key)
        if record is None or not _unsettled(record):
            return ReplaceOutcome(key.instance_id, "settled")
        annex_record = self.store.get_annex_record(key.annex_id)
        if annex_record is None or not annex_record.annex.replace:
            return ReplaceOutcome(key.instance_id, "not-asked")
        annex = annex_record.annex
        if record.instance.replacement_claimed_at is None:
            why = self._why_not(annex, now)
            if why is None:
                claim = self.store.claim_replacement(
                    key,
                    owner=annex.owner,
                    count=annex.count,
                    lease_after=now + self.settings.drain_lead,
                    now=now,
                    max_live_per_owner=self.settings.max_live_instances_per_owner,
                    max_live_in_stack=self.settings.max_live_instances,
                )
                if claim is ReplacementClaim.SETTLED:
                    return ReplaceOutcome(key.instance_id, "settled")
                why = _CLAIM_REFUSED.get(claim)
            if why is not None:
                self.store.decline_replacement(key, note=why, now=now, actor=ACTOR)
                return ReplaceOutcome(key.instance_id, "declined", note=why)
        elif not annex.live:  # claimed by a run that crashed; the annex ended since
            why = f"the annex has {annex.state.value}"
            self.store.release_replacement(key, owner=annex.owner, note=why, now=now, actor=ACTOR)
            return ReplaceOutcome(key.instance_id, "declined", note=why)
        return self._launch(annex, key, now)

    # --- 1. decide ------------------------------------------------------------------------------

    def _why_not(self, annex: Annex, now: datetime) -> str | None:
        """Why this annex gets no replacement now (None: it may have one)."""
        if annex.state is not AnnexState.RUNNING:
            return f"the annex is {annex.state.value}"
        if annex.market is not Market.SPOT:
            return "the annex is not a spot annex"
        lead = self.settings.drain_lead
        if annex.lease_expires_at - now <= lead:
            return (
                f"its lease ends at {to_iso(annex.lease_expires_at)}, within the drain lead of "
                f"{format_duration(lead)}"
            )
        if annex.budget_usd is not None and (why := self._over_budget(annex, now)):
            return why
        return self._over_monthly_budget(annex, now)

    def _over_budget(self, annex: Annex, now: datetime) -> str | None:
        book = self.store.price_book(self.settings.region)
        price = book.dearest(annex.instance_types, annex.market)
        instances = self.store.list_instances(annex.id)
        planned = Instance(
            instance_id=_PLANNED,
            annex_id=annex.id,
            instance_type=price.instance_type if price else annex.instance_types[0],
            market=annex.market,
            state=InstanceState.PENDING,
            launched_at=now,
        )
        cost = annex_cost(annex, [*instances, planned], book, now=now)
        if annex.budget_usd is not None and over_budget(annex.budget_usd, cost):
            return (
                f"its budget ${usd(annex.budget_usd)} would be reached (${usd(cost.accrued)} spent, "
                f"${cost.usd_per_hour.normalize():f}/h with a replacement)"
            )
        return None

    def _over_monthly_budget(self, annex: Annex, now: datetime) -> str | None:
        """A replacement is new spend: it must fit the owner's monthly budget as a request must (one
        instance at the dearest allowed type until the lease ends)."""
        book = self.store.price_book(self.settings.region)
        adds, _ = request_cost(1, annex.instance_types, annex.market, annex.lease_expires_at - now, book)
        try:
            admit_new_spend(
                self.store,
                annex.owner,
                adds=adds,
                default_budget=self.settings.default_monthly_budget,
                book=book,
                now=now,
                what="a replacement instance",
                field="replace",
            )
        except BudgetExceeded as refused:
            return refused.message
        return None

    # --- 3, 4. launch and record ------------------------------------------------------------------

    def _launch(self, annex: Annex, key: InstanceKey, now: datetime) -> ReplaceOutcome:
        launched = self._adopt(annex, key) or self._fleet(annex, key)
        if isinstance(launched, str):  # no capacity, or EC2 refused: give the unit back
            self.store.release_replacement(key, owner=annex.owner, note=launched, now=now, actor=ACTOR)
            return ReplaceOutcome(key.instance_id, "failed", note=launched)
        at = max(now, launched.launch_time or now)
        self.store.put_instances(
            [launched.record(annex.id, at, replaces=key.instance_id)], reap_at=at + self.settings.boot_grace
        )
        self.store.finish_replacement(key, replacement_id=launched.instance_id, now=now, actor=ACTOR)
        current = self.store.get_annex_record(annex.id)
        if current is None or not current.annex.live:
            # Stopped or expired while the replacement launched: nothing of it may keep running.
            end_annexes(
                self.store,
                self.launcher.ec2,
                [annex.id],
                reason=(current.annex.end_reason if current else None) or EndReason.STOPPED,
                actor=ACTOR,
                now=now,
                retention=self.settings.retention,
            ).raise_failures()
            return ReplaceOutcome(key.instance_id, "stopped", replacement=launched.instance_id)
        return ReplaceOutcome(key.instance_id, "replaced", replacement=launched.instance_id)

    def _adopt(self, annex: Annex, key: InstanceKey) -> Launched | None:
        """An instance a crashed earlier run launched for this claim: tagged for the annex in EC2 but not
        recorded. (Replacements of one annex are handled one at a time: its records share a stream
        partition.)"""
        recorded = {i.instance_id for i in self.store.list_instances(annex.id)}
        for tagged in self.launcher.ec2.live_instances(annex.id):
            if tagged.instance_id not in recorded:
                return Launched(
                    tagged.instance_id,
                    tagged.instance_type or annex.instance_types[0],
                    tagged.zone,
                    annex.market.value,
                    tagged.launch_time,
                )
        return None

    def _fleet(self, annex: Annex, key: InstanceKey) -> Launched | str:
        """One instance from an instant fleet with the annex's allocation, or why there is none."""
        capacity = self.launcher.capacity
        spec = self.launcher.spec(annex)
        spec = replace(spec, tags={**spec.tags, TAG_REPLACES: key.instance_id})
        owner_tags = {TAG_STACK: self.settings.stack_name, TAG_ID: annex.id}
        template = f"annex-{annex.id}-{key.instance_id}"
        token = client_token(annex.id, "replace", key.instance_id)
        capacity.create_launch_template(template, spec, owner_tags)
        try:
            result = capacity.create_fleet(template, self.launcher.slots(annex), 1, token, owner_tags)
        except (CapacityUnavailable, LaunchRejected) as exc:
            return f"no replacement could be launched: {exc.ec2_code}"
        finally:
            capacity.delete_launch_template(template)
        if not result.launched:
            return f"no replacement could be launched: {launch_note(1, 0, result.refusals)}"
        return result.launched[0]


_CLAIM_REFUSED = {
    ReplacementClaim.NO_ROOM: "the annex has ended, holds its count already, or its lease ends too soon",
    ReplacementClaim.OVER_QUOTA: "the owner's (or the pool's) live-instance limit is reached",
}


def _unsettled(record: InstanceRecord) -> bool:
    """Interrupted and reclaimed (or ended as silent after the warning: the reclaim event was lost),
    and neither replaced nor declined yet."""
    instance = record.instance
    reclaimed = instance.end_reason is EndReason.SPOT_INTERRUPTED or (
        instance.end_reason is EndReason.SILENT and instance.spot_notice is SpotNotice.INTERRUPTION
    )
    return (
        instance.state is InstanceState.TERMINATED
        and reclaimed
        and instance.replaced_by is None
        and instance.replacement_note is None
    )
