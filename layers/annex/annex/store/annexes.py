"""Annex records, with their name lock, client token and quota reservation."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from annex.core.clock import to_epoch, to_iso
from annex.core.errors import (
    AnnexNotFound,
    ConcurrentUpdate,
    LeaseConflict,
    LeaseNotDue,
    NameInUse,
    PolicyViolation,
    QuotaExceeded,
)
from annex.core.models import LIVE_STATES, Annex, AnnexDetail, AnnexState, EndReason, HistoryEvent, Instance
from annex.money.ledger import settled_seconds
from annex.store import ledger, quota
from annex.store._table import (
    DUE_LEASE,
    INDEX_ALL,
    INDEX_BY_OWNER,
    META,
    Cancelled,
    Key,
    StoreBase,
    annex_pk,
    decode_page_token,
    due_shard,
    encode_page_token,
    from_attrs,
    in_clause,
    model_fields,
    name_sk,
    owner_pk,
    to_attrs,
    token_sk,
)
from annex.store.records import AnnexRecord, TokenRecord, TokenTaken

HISTORY_PAGE = 50  # history events GET /annexes/{id} returns unless asked for fewer or more
_EVENT = "EVENT#"
_AFTER_EVENTS = "EVENT$"  # sorts after every EVENT# key: INST#, META and later prefixes are above it


def annex_key(annex_id: str) -> Key:
    return (annex_pk(annex_id), META)


def extend_token_key(annex_id: str, token: str) -> Key:
    """A client token of an extension: in the annex's partition, below its history (not read by
    get_detail), so the same token on another annex is another key."""
    return (annex_pk(annex_id), f"CLIENTTOKEN#extend#{token}")


def annex_item(annex: Annex, *, held: int, fingerprint: str | None = None) -> dict[str, Any]:
    """The stored form of an annex (the `due` index keys while it is live)."""
    data = annex.model_dump(mode="json")
    data.update(
        pk=annex_pk(annex.id),
        sk=META,
        kind="annex",
        created_key=f"{data['created_at']}#{annex.id}",
        held=held,
        fingerprint=fingerprint,
    )
    if annex.live:
        data.update(due_kind=due_shard(DUE_LEASE, data["pk"], META), due_at=to_epoch(annex.lease_expires_at))
    return data


def annex_record(item: dict[str, Any]) -> AnnexRecord:
    return AnnexRecord(annex=Annex.model_validate(model_fields(item)), held=int(item.get("held", 0)))


def _describe(annex: Annex) -> str:
    return (
        f"{annex.count} x {'/'.join(annex.instance_types)} {annex.market.value}, "
        f"lease until {to_iso(annex.lease_expires_at)}, idle timeout {annex.idle_timeout_seconds}s"
    )


class AnnexRecords(StoreBase):
    if TYPE_CHECKING:  # InstanceRecords' (AnnexStore has both): ending an annex settles its instances' cost

        def list_instances(self, annex_id: str) -> list[Instance]: ...

    @staticmethod
    def new_annex_id() -> str:
        return f"ax-{secrets.token_hex(8)}"

    def create_annex(
        self,
        annex: Annex,
        *,
        fingerprint: str,
        max_live_per_owner: int,
        max_live_in_stack: int,
        actor: str,
        retention: timedelta,
    ) -> None:
        """Write the annex, its name lock, its client token and its quota reservation atomically.

        Raises NameInUse, QuotaExceeded, or TokenTaken (a concurrent create with the same token won).
        """
        owner = owner_pk(annex.owner)
        tx = self._table.transaction()
        tx.put(
            "annex",
            annex_item(annex, held=annex.count, fingerprint=fingerprint),
            condition="attribute_not_exists(pk)",
        )
        tx.put(
            "name_lock",
            {"pk": owner, "sk": name_sk(annex.name), "annex_id": annex.id},
            condition="attribute_not_exists(pk)",
        )
        quota.reserve(tx, annex.owner, annex.count, limit=max_live_per_owner, stack_limit=max_live_in_stack)
        ledger.open_annex(tx, annex.owner, annex.id)
        self._history.add_to(
            tx, annex.id, at=annex.created_at, actor=actor, action="requested", detail=_describe(annex)
        )
        if annex.client_token:
            tx.put(
                "token",
                {
                    "pk": owner,
                    "sk": token_sk(annex.client_token),
                    "annex_id": annex.id,
                    "fingerprint": fingerprint,
                    "expires_at": to_epoch(annex.created_at + retention),
                },
                condition="attribute_not_exists(pk)",
            )
        try:
            tx.commit(self._table.client)
        except Cancelled as exc:
            if exc.failed("token"):
                raise TokenTaken(annex.client_token or "") from exc
            if exc.failed("name_lock"):
                raise NameInUse(
                    f"you already have a live annex named '{annex.name}'; choose another name "
                    "or stop that annex first",
                    field="name",
                ) from exc
            if exc.failed(quota.OWNER_OP):
                live = self.live_instances(annex.owner)
                raise QuotaExceeded(
                    f"this would bring your live instances to {live + annex.count}, over the limit "
                    f"of {max_live_per_owner}; stop an annex or ask for fewer",
                    field="count",
                ) from exc
            if exc.failed(quota.STACK_OP):
                raise QuotaExceeded(
                    f"this would bring the stack's live instances past its limit of {max_live_in_stack} "
                    "(MaxLiveInstances, for all owners together); ask for fewer or try later",
                    field="count",
                ) from exc
            if exc.conflict:
                raise ConcurrentUpdate(
                    "another request changed your annexes at the same moment; retry"
                ) from exc
            raise

    def get_annex(self, annex_id: str, *, consistent: bool = True) -> Annex:
        record = self.get_annex_record(annex_id, consistent=consistent)
        if record is None:
            raise AnnexNotFound(f"no annex {annex_id}")
        return record.annex

    def get_annex_record(self, annex_id: str, *, consistent: bool = True) -> AnnexRecord | None:
        item = self._table.get(annex_key(annex_id), consistent=consistent)
        return annex_record(item) if item is not None else None

    def get_annexes(self, annex_ids: Iterable[str]) -> dict[str, AnnexRecord]:
        """These annexes (batched, consistent), by id; missing ones are absent."""
        items = self._table.get_many(annex_key(a) for a in annex_ids)
        return {record.id: record for record in map(annex_record, items.values())}

    def get_detail(
        self, annex_id: str, *, history_limit: int = HISTORY_PAGE, history_token: str | None = None
    ) -> AnnexDetail:
        """The annex, its instances, and one page of its history, newest first (`history_next_token`
        for the older rest). Reading it costs the instances plus one page, however long the history."""
        pk = annex_pk(annex_id)
        annex: dict[str, Any] | None = None
        instances: list[Instance] = []
        above = self._table.query(
            KeyConditionExpression="pk = :pk AND sk >= :above",
            ExpressionAttributeValues=to_attrs({":pk": pk, ":above": _AFTER_EVENTS}),
            ConsistentRead=True,
        )
        for item in above:
            sk = item["sk"]
            if sk == META:
                annex = model_fields(item)
            elif sk.startswith("INST#"):
                instances.append(Instance.model_validate(model_fields(item)))
        if annex is None:
            raise AnnexNotFound(f"no annex {annex_id}")
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :e)",
            "ExpressionAttributeValues": to_attrs({":pk": pk, ":e": _EVENT}),
            "ScanIndexForward": False,
            "Limit": history_limit,
            "ConsistentRead": True,
        }
        start = decode_page_token(history_token)
        if start:
            if start.get("pk") != {"S": pk} or not start.get("sk", {}).get("S", "").startswith(_EVENT):
                raise PolicyViolation(
                    "history_next_token belongs to another listing; start again without it",
                    field="history_next_token",
                )
            kwargs["ExclusiveStartKey"] = start
        resp = self._table.client.query(**kwargs)
        history = [HistoryEvent.model_validate(model_fields(from_attrs(i))) for i in resp.get("Items", [])]
        return AnnexDetail.model_validate(
            {
                **annex,
                "instances": instances,
                "history": history,
                "history_next_token": encode_page_token(resp.get("LastEvaluatedKey")),
            }
        )

    def find_extend_token(self, annex_id: str, token: str) -> TokenRecord | None:
        """The extension a client token already made on this annex (None: not used yet)."""
        item = self._table.get(extend_token_key(annex_id, token))
        if item is None:
            return None
        return TokenRecord(annex_id=annex_id, fingerprint=item["fingerprint"])

    def find_token(self, owner: str, token: str) -> TokenRecord | None:
        item = self._table.get((owner_pk(owner), token_sk(token)))
        if item is None:
            return None
        return TokenRecord(annex_id=item["annex_id"], fingerprint=item["fingerprint"])

    def live_instances(self, owner: str) -> int:
        """The quota units the owner's live annexes hold."""
        return quota.live_units(self._table.get(quota.quota_key(owner)))

    def live_instances_in_stack(self) -> int:
        """The quota units all live annexes of the stack hold."""
        return quota.live_units(self._table.get(quota.stack_quota_key()))

    def list_annexes(
        self, *, owner: str | None, limit: int, page_token: str | None
    ) -> tuple[list[Annex], str | None]:
        """Newest first. `owner=None` lists every owner's annexes (administrators)."""
        if owner is None:
            index, cond, values = INDEX_ALL, "kind = :k", {":k": "annex"}
        else:
            index, cond, values = INDEX_BY_OWNER, "#o = :o", {":o": owner}
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": index,
            "KeyConditionExpression": cond,
            "ExpressionAttributeValues": to_attrs(values),
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if owner is not None:
            kwargs["ExpressionAttributeNames"] = {"#o": "owner"}
        start = decode_page_token(page_token)
        if start:
            kwargs["ExclusiveStartKey"] = start
        resp = self._table.client.query(**kwargs)
        annexes = [annex_record(from_attrs(i)).annex for i in resp.get("Items", [])]
        return annexes, encode_page_token(resp.get("LastEvaluatedKey"))

    # --- state changes --------------------------------------------------------------------------

    def extend_lease(
        self,
        annex: Annex,
        new_expiry: datetime,
        *,
        actor: str,
        now: datetime,
        note: str,
        client_token: str | None = None,
        fingerprint: str = "",
        retention: timedelta | None = None,
    ) -> Annex:
        """Move the lease expiry. Conditional on the version read and on the annex being live. With a
        `client_token`, the token is written in the same transaction (TokenTaken: it was used already,
        so this extension is a retry and changed nothing)."""
        updated = annex.model_copy(
            update={"lease_expires_at": new_expiry, "updated_at": now, "version": annex.version + 1}
        )
        live, live_values = in_clause("s", (s.value for s in LIVE_STATES))
        tx = self._table.transaction()
        tx.update(
            "annex",
            annex_key(annex.id),
            "SET lease_expires_at = :exp, due_at = :due, updated_at = :now, version = :next",
            condition=f"version = :v AND #s IN {live}",
            names={"#s": "state"},
            values={
                ":exp": to_iso(new_expiry),
                ":due": to_epoch(new_expiry),
                ":now": to_iso(now),
                ":next": annex.version + 1,
                ":v": annex.version,
                **live_values,
            },
        )
        self._history.add_to(tx, annex.id, at=now, actor=actor, action="extended", detail=note)
        if client_token:
            if retention is None:
                raise ValueError("an extension with a client token needs the retention of its token")
            pk, sk = extend_token_key(annex.id, client_token)
            tx.put(
                "token",
                {
                    "pk": pk,
                    "sk": sk,
                    "fingerprint": fingerprint,
                    "expires_at": to_epoch(now + retention),
                },
                condition="attribute_not_exists(pk)",
            )
        try:
            tx.commit(self._table.client)
        except Cancelled as exc:
            if exc.failed("token"):
                raise TokenTaken(client_token or "") from exc
            current = self.get_annex(annex.id)
            if not current.live:
                raise LeaseConflict(
                    f"annex {annex.id} has {current.state.value}; it cannot be extended"
                ) from exc
            raise ConcurrentUpdate(f"annex {annex.id} changed while extending; retry") from exc
        return updated

    def shorten_lease(
        self, annex: Annex, new_expiry: datetime, *, actor: str, now: datetime, note: str
    ) -> Annex:
        """Move the lease expiry earlier (and the `due` index with it). Conditional on the version read
        and on the annex being live."""
        return self._change_live(
            annex,
            {"lease_expires_at": new_expiry},
            "SET lease_expires_at = :exp, due_at = :due",
            {":exp": to_iso(new_expiry), ":due": to_epoch(new_expiry)},
            actor=actor,
            now=now,
            action="shortened",
            note=note,
        )

    def set_idle_timeout(self, annex: Annex, seconds: int, *, actor: str, now: datetime, note: str) -> Annex:
        """Change the idle timeout; heartbeats and idle-reap read it from this record."""
        return self._change_live(
            annex,
            {"idle_timeout_seconds": seconds},
            "SET idle_timeout_seconds = :idle",
            {":idle": seconds},
            actor=actor,
            now=now,
            action="idle-timeout",
            note=note,
        )

    def _change_live(
        self,
        annex: Annex,
        fields: dict[str, Any],
        update: str,
        values: dict[str, Any],
        *,
        actor: str,
        now: datetime,
        action: str,
        note: str,
    ) -> Annex:
        updated = annex.model_copy(update={**fields, "updated_at": now, "version": annex.version + 1})
        live, live_values = in_clause("s", (s.value for s in LIVE_STATES))
        tx = self._table.transaction()
        tx.update(
            "annex",
            annex_key(annex.id),
            f"{update}, updated_at = :now, version = :next",
            condition=f"version = :v AND #s IN {live}",
            names={"#s": "state"},
            values={
                **values,
                ":now": to_iso(now),
                ":next": annex.version + 1,
                ":v": annex.version,
                **live_values,
            },
        )
        self._history.add_to(tx, annex.id, at=now, actor=actor, action=action, detail=note)
        try:
            tx.commit(self._table.client)
        except Cancelled as exc:
            current = self.get_annex(annex.id)
            if not current.live:
                raise LeaseConflict(
                    f"annex {annex.id} has {current.state.value}; it cannot be changed"
                ) from exc
            raise ConcurrentUpdate(f"annex {annex.id} changed at the same moment; retry") from exc
        return updated

    def set_state(
        self,
        annex_id: str,
        *,
        expected: Iterable[AnnexState],
        new_state: AnnexState,
        now: datetime,
        actor: str,
        detail: str = "",
        launched_count: int | None = None,
        launch_note: str | None = None,
        release: int = 0,
        owner: str | None = None,
    ) -> bool:
        """Conditional state transition with a history event; False if the annex was not in `expected`.

        `launched_count` and `launch_note` record what launch started. `release` quota units held by
        the annex go back to `owner` in the same transaction (partial launches)."""
        names = {"#s": "state"}
        allowed, values = in_clause("e", (s.value for s in expected))
        values.update({":new": new_state.value, ":now": to_iso(now), ":one": 1})
        sets = ["#s = :new", "updated_at = :now", "version = version + :one"]
        if launched_count is not None:
            sets.append("launched_count = :count")
            values[":count"] = launched_count
        if launch_note is not None:
            sets.append("launch_note = :note")
            values[":note"] = launch_note
        update = "SET " + ", ".join(sets)
        if release:
            update += " ADD held :neg"
            values[":neg"] = -release
        tx = self._table.transaction()
        tx.update(
            "annex", annex_key(annex_id), update, condition=f"#s IN {allowed}", names=names, values=values
        )
        self._history.add_to(tx, annex_id, at=now, actor=actor, action=new_state.value, detail=detail)
        if release and owner:
            quota.release(tx, owner, release)
        try:
            tx.commit(self._table.client)
        except Cancelled as exc:
            if exc.failed("annex"):
                return False
            raise
        return True

    def end_annex(
        self,
        annex_id: str,
        *,
        reason: EndReason,
        now: datetime,
        actor: str,
        retention: timedelta,
        detail: str = "",
        final_state: AnnexState = AnnexState.ENDED,
        due_by: datetime | None = None,
    ) -> Annex | None:
        """End a live annex: state, name lock, quota, history and the owner's month ledger in one
        transaction.

        Returns the ended annex, or None if it had already ended (another writer won; nothing changed).
        With `due_by` (the lease-check), the annex ends only if its lease has passed by then on this
        consistent read: an extension that raced the eventually consistent `due` index wins, and
        LeaseNotDue is raised. (Extending bumps `version`, which the write is conditional on.)
        """
        for _attempt in range(5):
            record = self.get_annex_record(annex_id)
            if record is None:
                raise AnnexNotFound(f"no annex {annex_id}")
            annex = record.annex
            if not annex.live:
                return None
            if due_by is not None and annex.lease_expires_at > due_by:
                raise LeaseNotDue(
                    f"annex {annex_id} was extended to {to_iso(annex.lease_expires_at)}; not due yet"
                )
            tx = self._table.transaction()
            tx.update(
                "annex",
                annex_key(annex_id),
                "SET #s = :ended, end_reason = :r, ended_at = :now, updated_at = :now,"
                " version = :next, held = :zero, expires_at = :ttl REMOVE due_kind, due_at",
                condition="version = :v AND held = :held",
                names={"#s": "state"},
                values={
                    ":ended": final_state.value,
                    ":r": reason.value,
                    ":now": to_iso(now),
                    ":next": annex.version + 1,
                    ":zero": 0,
                    ":ttl": to_epoch(now + retention),
                    ":v": annex.version,
                    ":held": record.held,
                },
            )
            tx.delete(
                "name_lock",
                (owner_pk(annex.owner), name_sk(annex.name)),
                condition="attribute_not_exists(pk) OR annex_id = :id",
                values={":id": annex_id},
            )
            self._history.add_to(
                tx, annex_id, at=now, actor=actor, action=final_state.value, detail=detail or reason.value
            )
            quota.release(tx, annex.owner, record.held)
            # What it ran joins the owner's month ledger in this same conditional write: exactly once.
            ledger.settle_annex(
                tx, annex.owner, annex_id, settled_seconds(annex, self.list_instances(annex_id), ended_at=now)
            )
            try:
                tx.commit(self._table.client)
            except Cancelled:
                continue  # someone else moved it; read again and decide
            return annex.model_copy(
                update={
                    "state": final_state,
                    "end_reason": reason,
                    "ended_at": now,
                    "updated_at": now,
                    "version": annex.version + 1,
                }
            )
        raise ConcurrentUpdate(f"annex {annex_id} kept changing while ending; the next sweep will finish it")
