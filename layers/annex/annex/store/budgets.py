"""Budgets: when each budgeted annex must be looked at, and each owner's monthly budget.

| item          | pk           | sk      | indexes                                            |
|---------------|--------------|---------|----------------------------------------------------|
| annex budget  | ANNEX#<id>   | BUDGET  | due (`budget`, when the budget check must look)    |
| owner budget  | OWNER#<arn>  | BUDGET  |                                                    |

An annex budget item carries the `due` keys while its annex is live and budgeted: the budget check reads
only what is due (O(due), like the lease-check). `warned` records that the 80% notice went out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from annex.core.clock import from_epoch, parse_time, to_epoch, to_iso
from annex.core.errors import ConcurrentUpdate, LeaseConflict
from annex.core.models import LIVE_STATES, Annex
from annex.store._table import (
    META,
    Cancelled,
    StoreBase,
    annex_id_of,
    annex_pk,
    due_shard,
    in_clause,
    owner_pk,
    to_attrs,
)
from annex.store.due import due_items

BUDGET = "BUDGET"
DUE_BUDGET = "budget"


@dataclass(frozen=True)
class BudgetDue:
    annex_id: str
    due_at: datetime | None
    warned: bool


@dataclass(frozen=True)
class OwnerBudgetRecord:
    owner: str
    monthly_usd: Decimal
    set_by: str
    set_at: datetime


class BudgetRecords(StoreBase):
    # --- per annex ------------------------------------------------------------------------------

    def schedule_budget(
        self, annex_id: str, due_at: datetime | None, *, expires: datetime, warned: bool | None = None
    ) -> None:
        """Set (or, with None, clear) when the budget check must next look at this annex."""
        names = {"#e": "expires_at"}
        values: dict[str, object] = {":e": to_epoch(expires)}
        sets = ["#e = :e"]
        removes: list[str] = []
        if due_at is None:
            removes += ["due_kind", "due_at"]
        else:
            sets += ["due_kind = :k", "due_at = :d"]
            values.update({":k": due_shard(DUE_BUDGET, annex_pk(annex_id), BUDGET), ":d": to_epoch(due_at)})
        if warned is not None:
            sets.append("warned = :w")
            values[":w"] = warned
        expr = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        self._table.client.update_item(
            TableName=self.table_name,
            Key=to_attrs({"pk": annex_pk(annex_id), "sk": BUDGET}),
            UpdateExpression=expr,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=to_attrs(values),
        )

    def budget_due(self, annex_id: str) -> BudgetDue | None:
        item = self._table.get((annex_pk(annex_id), BUDGET))
        if item is None:
            return None
        due = item.get("due_at")
        return BudgetDue(
            annex_id=annex_id,
            due_at=from_epoch(int(due)) if due is not None else None,
            warned=bool(item.get("warned", False)),
        )

    def due_budgets(self, *, now: datetime, limit: int = 1000) -> Iterator[str]:
        """Budgeted live annexes the budget check must look at by `now` (as the index last saw them)."""
        for item in due_items(self._table, DUE_BUDGET, now, limit=limit):
            if item["sk"] == BUDGET:
                yield annex_id_of(item["pk"])

    def set_annex_budget(
        self,
        annex: Annex,
        budget: Decimal,
        *,
        due_at: datetime | None,
        expires: datetime,
        actor: str,
        now: datetime,
    ) -> Annex:
        """Set or change a live annex's budget, and when the budget check must look at it, in one
        transaction conditional on the version read (ConcurrentUpdate / LeaseConflict otherwise)."""
        updated = annex.model_copy(
            update={"budget_usd": budget, "updated_at": now, "version": annex.version + 1}
        )
        live, live_values = in_clause("s", (s.value for s in LIVE_STATES))
        tx = self._table.transaction()
        tx.update(
            "annex",
            (annex_pk(annex.id), META),
            "SET budget_usd = :b, updated_at = :now, version = :next",
            condition=f"version = :v AND #s IN {live}",
            names={"#s": "state"},
            values={
                ":b": format(budget, "f"),
                ":now": to_iso(now),
                ":next": annex.version + 1,
                ":v": annex.version,
                **live_values,
            },
        )
        item: dict[str, object] = {"pk": annex_pk(annex.id), "sk": BUDGET, "expires_at": to_epoch(expires)}
        if due_at is not None:
            item.update(due_kind=due_shard(DUE_BUDGET, annex_pk(annex.id), BUDGET), due_at=to_epoch(due_at))
        tx.put("budget", item)
        old = f"${annex.budget_usd}" if annex.budget_usd is not None else "none"
        self._history.add_to(tx, annex.id, at=now, actor=actor, action="budget", detail=f"{old} -> ${budget}")
        try:
            tx.commit(self._table.client)
        except Cancelled as exc:
            current = self._table.get((annex_pk(annex.id), META))
            if current is None or current.get("state") not in {s.value for s in LIVE_STATES}:
                raise LeaseConflict(f"annex {annex.id} has ended; its budget cannot change") from exc
            raise ConcurrentUpdate(f"annex {annex.id} changed while setting its budget; retry") from exc
        return updated

    # --- per owner, per month -------------------------------------------------------------------

    def set_owner_budget(
        self, owner: str, monthly_usd: Decimal, *, actor: str, now: datetime
    ) -> OwnerBudgetRecord:
        record = OwnerBudgetRecord(owner=owner, monthly_usd=monthly_usd, set_by=actor, set_at=now)
        self._table.put(
            {
                "pk": owner_pk(owner),
                "sk": BUDGET,
                "owner_arn": owner,
                "monthly_usd": format(monthly_usd, "f"),
                "set_by": actor,
                "set_at": to_iso(now),
            }
        )
        return record

    def owner_budget(self, owner: str) -> OwnerBudgetRecord | None:
        item = self._table.get((owner_pk(owner), BUDGET))
        if item is None:
            return None
        return OwnerBudgetRecord(
            owner=owner,
            monthly_usd=Decimal(str(item["monthly_usd"])),
            set_by=str(item["set_by"]),
            set_at=parse_time(item["set_at"]),
        )


def retention_after(lease_end: datetime, retention: timedelta) -> datetime:
    return lease_end + retention
