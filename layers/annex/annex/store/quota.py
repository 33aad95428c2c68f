"""The quota invariant, in one place: an owner's QUOTA.live is the sum of the units (`held`) of their
annexes. Every change to either goes through these operations, added to the transaction that changes
the annex, so the two move together or not at all."""

from __future__ import annotations

from typing import Any

from annex.core.models import LIVE_STATES
from annex.store._table import META, QUOTA, Key, Transaction, annex_pk, in_clause, owner_pk

LIVE = "live"


def quota_key(owner: str) -> Key:
    return (owner_pk(owner), QUOTA)


def reserve(tx: Transaction, owner: str, units: int, *, limit: int) -> None:
    """Take `units` for a new annex unless that brings the owner past `limit` (operation `quota`). The
    annex item itself is written with `held` = `units` (see `annex_held`)."""
    tx.update(
        "quota",
        quota_key(owner),
        "ADD #live :n",
        condition="attribute_not_exists(#live) OR #live <= :room",
        names={"#live": LIVE},
        values={":n": units, ":room": limit - units},
    )


def release(tx: Transaction, owner: str, units: int) -> None:
    """Give `units` back to the owner (operation `quota`). The caller lowers the annex's `held` by as
    many in the same transaction."""
    if units:
        tx.update(
            "quota",
            quota_key(owner),
            "ADD #live :d",
            names={"#live": LIVE},
            values={":d": -units},
        )


def release_one_held(tx: Transaction, annex_id: str) -> None:
    """One unit fewer held by a live annex that still holds one (operation `held`)."""
    live, values = in_clause("s", (s.value for s in LIVE_STATES))
    tx.update(
        "held",
        (annex_pk(annex_id), META),
        "ADD held :neg",
        condition=f"#s IN {live} AND held > :zero",
        names={"#s": "state"},
        values={":neg": -1, ":zero": 0, **values},
    )


def live_units(item: dict[str, Any] | None) -> int:
    """The owner's units in use, from their QUOTA item (None: they never had any)."""
    return int(item.get(LIVE, 0)) if item else 0
