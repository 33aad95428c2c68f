"""Each owner's month ledger and open annexes, so admission control reads O(live annexes), not every annex
the owner keeps (money/ledger.py has what is counted and why).

| item         | pk           | sk                 | attributes                                          |
|--------------|--------------|--------------------|-----------------------------------------------------|
| open annexes | OWNER#<arn>  | LEDGER#OPEN        | `open_ids`: the owner's annexes not yet ended       |
| month ledger | OWNER#<arn>  | LEDGER#<yyyy-mm>   | `annexes`; `s#<type>#<market>#<zone>`: seconds run  |

Both are written only inside the transactions that create an annex (its id joins `open_ids`) and end it
(its id leaves `open_ids`, its seconds are added to each month it overlaps): those transactions are
conditional on the annex record, so a retried or racing end adds exactly once. Reading both items in one
TransactGetItems gives a snapshot: an annex is either still open or already in the month's ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from annex.store._table import StoreBase, Transaction, from_attrs, key_attrs, owner_pk

OPEN = "LEDGER#OPEN"
OPEN_IDS = "open_ids"
SECONDS = "s#"


def month_sk(month: str) -> str:
    return f"LEDGER#{month}"


@dataclass(frozen=True)
class OwnerLedger:
    """One owner's month as the ledger holds it: the annexes still open when it was read, and what the
    annexes already ended ran in `month` (billed seconds per price key)."""

    owner: str
    month: str
    open_ids: frozenset[str] = frozenset()
    annexes: int = 0
    seconds: dict[str, int] = field(default_factory=dict)


def open_annex(tx: Transaction, owner: str, annex_id: str) -> None:
    """The annex joins the owner's open annexes (operation `ledger_open`), in the transaction creating it."""
    tx.update(
        "ledger_open",
        (owner_pk(owner), OPEN),
        "ADD #ids :id",
        names={"#ids": OPEN_IDS},
        values={":id": {annex_id}},
    )


def settle_annex(tx: Transaction, owner: str, annex_id: str, months: Mapping[str, Mapping[str, int]]) -> None:
    """The annex leaves the owner's open annexes and its seconds join each month's ledger (operations
    `ledger_open` and `ledger#<month>`), in the transaction that ends it."""
    tx.update(
        "ledger_open",
        (owner_pk(owner), OPEN),
        "DELETE #ids :id",
        names={"#ids": OPEN_IDS},
        values={":id": {annex_id}},
    )
    for month, seconds in sorted(months.items()):
        names = {"#n": "annexes"}
        values: dict[str, object] = {":one": 1}
        adds = ["#n :one"]
        for i, (key, n) in enumerate(sorted(seconds.items())):
            names[f"#k{i}"] = SECONDS + key
            values[f":v{i}"] = n
            adds.append(f"#k{i} :v{i}")
        tx.update(
            f"ledger#{month}",
            (owner_pk(owner), month_sk(month)),
            "ADD " + ", ".join(adds),
            names=names,
            values=values,
        )


class LedgerRecords(StoreBase):
    def owner_ledger(self, owner: str, month: str) -> OwnerLedger:
        """The owner's open annexes and `month`'s ledger, read together (one TransactGetItems)."""
        keys = [(owner_pk(owner), OPEN), (owner_pk(owner), month_sk(month))]
        resp = self._table.client.transact_get_items(
            TransactItems=[{"Get": {"TableName": self.table_name, "Key": key_attrs(*k)}} for k in keys]
        )
        found = [from_attrs(r["Item"]) if "Item" in r else {} for r in resp["Responses"]]
        self._table.items_read += sum(1 for item in found if item)
        opened, ledger = found
        return OwnerLedger(
            owner=owner,
            month=month,
            open_ids=frozenset(opened.get(OPEN_IDS, ())),
            annexes=int(ledger.get("annexes", 0)),
            seconds={k.removeprefix(SECONDS): int(v) for k, v in ledger.items() if k.startswith(SECONDS)},
        )
