"""Instance records: what launch started, what heartbeats report, and their termination, which gives
the instance's quota unit back exactly once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from annex.core.clock import from_epoch, to_epoch, to_iso
from annex.core.errors import ConcurrentUpdate
from annex.core.models import (
    LIVE_INSTANCE_STATES,
    AnnexState,
    EndReason,
    Instance,
    InstanceState,
    SpotNotice,
)
from annex.store import quota
from annex.store._table import (
    DUE_REAP,
    META,
    TRANSACTION_LIMIT,
    Cancelled,
    Key,
    StoreBase,
    Transaction,
    annex_id_of,
    annex_pk,
    due_shard,
    in_clause,
    instance_sk,
    model_fields,
)
from annex.store.annexes import annex_record
from annex.store.records import (
    AnnexRecord,
    HeartbeatVersion,
    InstanceEnd,
    InstanceKey,
    InstanceRecord,
    ReplacementClaim,
)

_ENDED = "SET #s = :t, end_reason = :r, ended_at = :now, expires_at = :ttl REMOVE due_kind, due_at"


def instance_key(key: InstanceKey) -> Key:
    return (annex_pk(key.annex_id), instance_sk(key.instance_id))


def instance_item(instance: Instance, *, reap_at: datetime | None) -> dict[str, Any]:
    data = instance.model_dump(mode="json")
    data.update(pk=annex_pk(instance.annex_id), sk=instance_sk(instance.instance_id))
    if reap_at is not None and instance.state in LIVE_INSTANCE_STATES:
        data.update(due_kind=due_shard(DUE_REAP, data["pk"], data["sk"]), due_at=to_epoch(reap_at))
    return data


def instance_record(item: dict[str, Any]) -> InstanceRecord:
    due = item.get("due_at")
    return InstanceRecord(
        instance=Instance.model_validate(model_fields(item)),
        due_at=from_epoch(int(due)) if due is not None else None,
        heartbeat=HeartbeatVersion(item.get("last_heartbeat_at")),
    )


def _ended_values(reason: EndReason, now: datetime, retention: timedelta) -> dict[str, Any]:
    return {
        ":t": InstanceState.TERMINATED.value,
        ":r": reason.value,
        ":now": to_iso(now),
        ":ttl": to_epoch(now + retention),
    }


class InstanceRecords(StoreBase):
    def put_instances(self, instances: Sequence[Instance], *, reap_at: datetime | None) -> None:
        """Record launched instances (idempotent: an existing record is left as it is).

        Up to 100 records go in one transaction of conditional puts. When a record already exists (a
        launch resumed after a crash) the transaction is cancelled whole, and that chunk is written one
        record at a time, skipping the ones that exist."""
        items = [instance_item(instance, reap_at=reap_at) for instance in instances]
        for start in range(0, len(items), TRANSACTION_LIMIT):
            chunk = items[start : start + TRANSACTION_LIMIT]
            tx = self._table.transaction()
            for item in chunk:
                tx.put(item["sk"], item, condition="attribute_not_exists(pk)")
            try:
                tx.commit(self._table.client)
            except Cancelled:
                for item in chunk:
                    self._table.put(item, condition="attribute_not_exists(pk)")

    def list_instances(self, annex_id: str) -> list[Instance]:
        return [
            instance_record(item).instance
            for item in self._table.query_partition(annex_pk(annex_id), "INST#")
        ]

    def get_instance(self, key: InstanceKey) -> InstanceRecord | None:
        """One instance record (a consistent GetItem), or None."""
        item = self._table.get(instance_key(key))
        return instance_record(item) if item is not None else None

    def get_instances_with_annexes(
        self, keys: Iterable[InstanceKey], *, consistent: bool = True
    ) -> tuple[dict[InstanceKey, InstanceRecord], dict[str, AnnexRecord]]:
        """These instances and their annexes, in one batched read (strongly consistent unless told:
        eventually consistent costs half); missing ones are absent."""
        keys = list(keys)
        wanted = [instance_key(k) for k in keys] + [(annex_pk(k.annex_id), META) for k in keys]
        items = self._table.get_many(wanted, consistent=consistent)
        instances: dict[InstanceKey, InstanceRecord] = {}
        annexes: dict[str, AnnexRecord] = {}
        for (pk, sk), item in items.items():
            if sk == META:
                annexes[annex_id_of(pk)] = annex_record(item)
            else:
                record = instance_record(item)
                instances[record.key] = record
        return instances, annexes

    def mark_instances_ended(
        self,
        annex_id: str,
        instance_ids: Iterable[str],
        *,
        reason: EndReason,
        now: datetime,
        retention: timedelta,
    ) -> int:
        """Record that TerminateInstances was sent; leaves the due index. Returns how many changed.
        (No quota unit moves: the annex has ended and gave back everything it held.)"""
        changed = 0
        for instance_id in instance_ids:
            changed += self._table.update(
                instance_key(InstanceKey(annex_id, instance_id)),
                _ENDED,
                condition="attribute_exists(pk) AND #s <> :t",
                names={"#s": "state"},
                values=_ended_values(reason, now, retention),
            )
        return changed

    # --- heartbeats and idle-reap: conditional on the heartbeat version read ----------------------

    def apply_heartbeat(
        self,
        key: InstanceKey,
        *,
        now: datetime,
        claimed_slots: int,
        total_slots: int,
        idle_since: datetime | None,
        due_at: datetime | None,
        seen: HeartbeatVersion,
        seen_due: datetime | None = None,
        problem: str | None = None,
    ) -> bool:
        """Record one heartbeat: one conditional UpdateItem. It applies only if the instance is still
        live and nobody recorded a heartbeat since `seen` (optimistic concurrency), so a duplicate or
        late report never moves `last_heartbeat_at` backwards. False if it did not apply.

        `due_at` moves the instance's entry in the `due` index; None leaves it where it is (the write
        then changes no index key, so it costs the KEYS_ONLY index nothing) and is conditional on the
        entry still being `seen_due`, the one the caller decided from."""
        values: dict[str, Any] = {
            ":now": to_iso(now),
            ":claimed": claimed_slots,
            ":total": total_slots,
            ":running": InstanceState.RUNNING.value,
        }
        sets = [
            "last_heartbeat_at = :now",
            "claimed_slots = :claimed",
            "total_slots = :total",
            "#s = :running",
        ]
        condition = ""
        if due_at is not None:
            sets += ["due_kind = :shard", "due_at = :due"]
            values.update({":shard": due_shard(DUE_REAP, *instance_key(key)), ":due": to_epoch(due_at)})
        elif seen_due is None:
            condition = "attribute_not_exists(due_at)"
        else:
            condition = "due_at = :seen_due"
            values[":seen_due"] = to_epoch(seen_due)
        if problem is not None:
            sets.append("problem = :problem")
            values[":problem"] = problem
        if idle_since is not None:
            sets.append("idle_since = :idle")
            values[":idle"] = to_iso(idle_since)
        update = "SET " + ", ".join(sets) + (" REMOVE idle_since" if idle_since is None else "")
        return self._update_unheard(key, update, values, seen=seen, also=condition)

    def add_problem_event(self, key: InstanceKey, *, problem: str, now: datetime) -> None:
        """The history event for a boot problem an instance reported."""
        self._history.add(key.annex_id, at=now, actor=key.instance_id, action="boot-problem", detail=problem)

    def reschedule_instance(self, key: InstanceKey, *, due_at: datetime, seen: HeartbeatVersion) -> bool:
        """Move an instance's next reap check, unless a heartbeat landed since it was read. (It writes the
        shard key too, which moves an entry written before sharding onto its shard.)"""
        values = {":shard": due_shard(DUE_REAP, *instance_key(key)), ":due": to_epoch(due_at)}
        return self._update_unheard(key, "SET due_kind = :shard, due_at = :due", values, seen=seen)

    def claim_for_termination(self, key: InstanceKey, *, reason: EndReason, seen: HeartbeatVersion) -> bool:
        """Claim a live instance for termination (state `terminating`, reason kept) unless a heartbeat
        landed since it was read. It stays in the `due` index until the termination is recorded, so a
        crash between this and TerminateInstances is finished by the next sweep."""
        values = {":t": InstanceState.TERMINATING.value, ":reason": reason.value}
        return self._update_unheard(key, "SET #s = :t, end_reason = :reason", values, seen=seen)

    def _update_unheard(
        self, key: InstanceKey, update: str, values: dict[str, Any], *, seen: HeartbeatVersion, also: str = ""
    ) -> bool:
        """UpdateItem on a live (pending or running) instance record, unless a heartbeat was recorded
        since `seen` (and, with `also`, only if that condition holds too). False if a condition failed."""
        live, live_values = in_clause("live", (s.value for s in LIVE_INSTANCE_STATES))
        values = {**values, **live_values}
        condition = f"attribute_exists(pk) AND #s IN {live} AND "
        if seen.never_heard:
            condition += "attribute_not_exists(last_heartbeat_at)"
        else:
            condition += "last_heartbeat_at = :seen"
            values[":seen"] = seen._stamp  # the store made this token
        if also:
            condition += f" AND {also}"
        return self._table.update(
            instance_key(key), update, condition=condition, names={"#s": "state"}, values=values
        )

    # --- spot notices -----------------------------------------------------------------------------

    def record_spot_notice(
        self, key: InstanceKey, *, notice: SpotNotice, at: datetime, actor: str, detail: str
    ) -> bool:
        """Record a spot notice on a recorded instance, with a history event, in one transaction.

        Idempotent: it applies only if the instance has no notice yet, or had a rebalance recommendation
        and this is an interruption warning (the stronger notice). A duplicate changes nothing (False)."""
        tx = self._table.transaction()
        tx.update(
            "instance",
            instance_key(key),
            "SET spot_notice = :n, spot_notice_at = :at",
            condition=(
                "attribute_exists(pk) AND (attribute_not_exists(spot_notice)"
                " OR (spot_notice = :rebalance AND :n = :interruption))"
            ),
            values={
                ":n": notice.value,
                ":at": to_iso(at),
                ":rebalance": SpotNotice.REBALANCE.value,
                ":interruption": SpotNotice.INTERRUPTION.value,
            },
        )
        self._history.add_to(
            tx, key.annex_id, at=at, actor=actor, action=f"spot-{notice.value}", detail=detail
        )
        if notice is SpotNotice.INTERRUPTION:  # counted once: the instance's condition admits it once
            tx.update(
                "annex",
                (annex_pk(key.annex_id), META),
                "ADD interrupted_count :one",
                condition="attribute_exists(pk)",
                values={":one": 1},
            )
        try:
            tx.commit(self._table.client)
        except Cancelled as exc:
            if exc.failed("instance"):
                return False
            raise
        return True

    # --- termination ------------------------------------------------------------------------------

    def end_instance(
        self,
        key: InstanceKey,
        *,
        owner: str,
        reason: EndReason,
        now: datetime,
        actor: str,
        retention: timedelta,
        detail: str = "",
    ) -> InstanceEnd:
        """Record that one instance was terminated and give its quota unit back, exactly once.

        One transaction: the instance (conditional on not being terminated yet) leaves the `due` index;
        the annex gives back one held unit (conditional on being live and holding one); the owner's quota
        gets one unit back; a history event. If the annex has already ended, `end_annex` released
        everything it held, so the instance is only marked.
        """
        for _attempt in range(5):
            tx = self._table.transaction()
            tx.update(
                "instance",
                instance_key(key),
                _ENDED,
                condition="attribute_exists(pk) AND #s <> :t",
                names={"#s": "state"},
                values=_ended_values(reason, now, retention),
            )
            quota.release_one_held(tx, key.annex_id)
            quota.release(tx, owner, 1)
            self._history.add_to(
                tx,
                key.annex_id,
                at=now,
                actor=actor,
                action="instance-terminated",
                detail=f"{key.instance_id}: {detail or reason.value}",
            )
            try:
                tx.commit(self._table.client)
            except Cancelled as exc:
                if exc.failed("instance"):
                    return InstanceEnd.UNCHANGED  # already recorded (or never recorded): nothing to give back
                if exc.failed("held"):
                    marked = self.mark_instances_ended(
                        key.annex_id, [key.instance_id], reason=reason, now=now, retention=retention
                    )
                    return InstanceEnd.MARKED if marked else InstanceEnd.UNCHANGED
                if exc.conflict:
                    continue
                raise
            return InstanceEnd.RELEASED
        raise ConcurrentUpdate(f"instance {key.instance_id} kept changing; the next sweep will finish it")

    # --- replacing an interrupted instance --------------------------------------------------------
    # The interrupted record carries the replacement's progress: `replacement_claimed_at` (a quota unit
    # taken for it), then `replaced_by` (launched) or `replacement_note` (why not). Each step is
    # conditional on the one before, so a repeated delivery never claims, launches or releases twice.

    _UNSETTLED = (
        "#s = :t AND (end_reason = :spot OR (end_reason = :silent AND spot_notice = :warned))"
        " AND attribute_not_exists(replaced_by) AND attribute_not_exists(replacement_note)"
    )

    def _interrupted_values(self) -> dict[str, Any]:
        """Ended by EC2's reclaim, or as silent after an interruption warning (the reclaim event lost)."""
        return {
            ":t": InstanceState.TERMINATED.value,
            ":spot": EndReason.SPOT_INTERRUPTED.value,
            ":silent": EndReason.SILENT.value,
            ":warned": SpotNotice.INTERRUPTION.value,
        }

    def claim_replacement(
        self,
        key: InstanceKey,
        *,
        owner: str,
        count: int,
        lease_after: datetime,
        now: datetime,
        max_live_per_owner: int,
        max_live_in_stack: int,
    ) -> ReplacementClaim:
        """Claim the replacement of an instance EC2 reclaimed, taking one quota unit for it, in one
        transaction: the record (ended by the interruption, not yet claimed or settled), the annex's
        held units (running, below its count, its lease ending after `lease_after`), and the owner's and
        the stack's quota (within their limits)."""
        tx = self._table.transaction()
        tx.update(
            "instance",
            instance_key(key),
            "SET replacement_claimed_at = :now",
            condition=f"{self._UNSETTLED} AND attribute_not_exists(replacement_claimed_at)",
            names={"#s": "state"},
            values={":now": to_iso(now), **self._interrupted_values()},
        )
        quota.take_one_held(
            tx, key.annex_id, count=count, running=AnnexState.RUNNING.value, lease_after=to_iso(lease_after)
        )
        quota.reserve(tx, owner, 1, limit=max_live_per_owner, stack_limit=max_live_in_stack)
        try:
            tx.commit(self._table.client)
        except Cancelled as exc:
            if exc.failed("instance"):
                return ReplacementClaim.SETTLED
            if exc.failed("held"):
                return ReplacementClaim.NO_ROOM
            if exc.failed(quota.OWNER_OP) or exc.failed(quota.STACK_OP):
                return ReplacementClaim.OVER_QUOTA
            raise
        return ReplacementClaim.CLAIMED

    def decline_replacement(self, key: InstanceKey, *, note: str, now: datetime, actor: str) -> bool:
        """Record why an unclaimed interrupted instance is not replaced (once), with a history event."""
        tx = self._table.transaction()
        tx.update(
            "instance",
            instance_key(key),
            "SET replacement_note = :note",
            condition=f"{self._UNSETTLED} AND attribute_not_exists(replacement_claimed_at)",
            names={"#s": "state"},
            values={":note": note, **self._interrupted_values()},
        )
        self._history.add_to(
            tx, key.annex_id, at=now, actor=actor, action="not-replaced", detail=f"{key.instance_id}: {note}"
        )
        return self._settle(tx)

    def finish_replacement(self, key: InstanceKey, *, replacement_id: str, now: datetime, actor: str) -> bool:
        """The claimed replacement is running and recorded: name it on the interrupted record, once."""
        tx = self._table.transaction()
        tx.update(
            "instance",
            instance_key(key),
            "SET replaced_by = :new",
            condition=f"{self._UNSETTLED} AND attribute_exists(replacement_claimed_at)",
            names={"#s": "state"},
            values={":new": replacement_id, **self._interrupted_values()},
        )
        self._history.add_to(
            tx,
            key.annex_id,
            at=now,
            actor=actor,
            action="instance-replaced",
            detail=f"{replacement_id} replaced {key.instance_id} (spot interruption)",
        )
        tx.update(
            "annex",
            (annex_pk(key.annex_id), META),
            "ADD replaced_count :one",
            condition="attribute_exists(pk)",
            values={":one": 1},
        )
        return self._settle(tx)

    def release_replacement(
        self, key: InstanceKey, *, owner: str, note: str, now: datetime, actor: str
    ) -> bool:
        """The claimed replacement could not be launched: record why and give its quota unit back, once
        (if the annex ended meanwhile, `end_annex` gave back everything it held: only the note is set)."""
        for release in (True, False):
            tx = self._table.transaction()
            tx.update(
                "instance",
                instance_key(key),
                "SET replacement_note = :note",
                condition=f"{self._UNSETTLED} AND attribute_exists(replacement_claimed_at)",
                names={"#s": "state"},
                values={":note": note, **self._interrupted_values()},
            )
            if release:
                quota.release_one_held(tx, key.annex_id)
                quota.release(tx, owner, 1)
            self._history.add_to(
                tx,
                key.annex_id,
                at=now,
                actor=actor,
                action="not-replaced",
                detail=f"{key.instance_id}: {note}",
            )
            try:
                tx.commit(self._table.client)
            except Cancelled as exc:
                if exc.failed("instance"):
                    return False
                if release and exc.failed("held"):
                    continue
                raise
            return True
        return False

    def _settle(self, tx: Transaction) -> bool:
        try:
            tx.commit(self._table.client)
        except Cancelled as exc:
            if exc.failed("instance"):
                return False
            raise
        return True
