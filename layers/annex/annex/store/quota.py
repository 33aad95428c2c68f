"""The quota invariant, in one place: an owner's QUOTA.live is the sum of the units (`held`) of their
annexes, and the stack's QUOTA.live (item STACK/QUOTA) is the sum over all owners. Every change to any
of them goes through these operations, added to the transaction that changes the annex, so they move
together or not at all.

The stack item is one item for the whole stack: every create and every release writes it, so the
stack's rate of creates + releases is bounded by DynamoDB's per-item/per-partition write limit
(1,000 write units/s per partition)."""

from __future__ import annotations

from typing import Any

from annex.core.models import LIVE_STATES
from annex.store._table import META, QUOTA, STACK, Key, Transaction, annex_pk, in_clause, owner_pk

LIVE = "live"
OWNER_OP = "quota"
STACK_OP = "stack_quota"


def quota_key(owner: str) -> Key:
    return (owner_pk(owner), QUOTA)


def stack_quota_key() -> Key:
    return (STACK, QUOTA)


def reserve(tx: Transaction, owner: str, units: int, *, limit: int, stack_limit: int) -> None:
    """Take `units` for a new annex unless that brings the owner past `limit` (operation `quota`) or
    the whole stack past `stack_limit` (operation `stack_quota`). The annex item itself is written with
    `held` = `units` (see `annex_held`)."""
    for op, key, room in ((OWNER_OP, quota_key(owner), limit), (STACK_OP, stack_quota_key(), stack_limit)):
        tx.update(
            op,
            key,
            "ADD #live :n",
            condition="attribute_not_exists(#live) OR #live <= :room",
            names={"#live": LIVE},
            values={":n": units, ":room": room - units},
        )


def release(tx: Transaction, owner: str, units: int) -> None:
    """Give `units` back to the owner (operation `quota`) and to the stack (operation `stack_quota`).
    The caller lowers the annex's `held` by as many in the same transaction."""
    if units:
        for op, key in ((OWNER_OP, quota_key(owner)), (STACK_OP, stack_quota_key())):
            tx.update(op, key, "ADD #live :d", names={"#live": LIVE}, values={":d": -units})


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


def take_one_held(tx: Transaction, annex_id: str, *, count: int, running: str, lease_after: str) -> None:
    """One unit more held by a running annex (operation `held`), for a replacement instance: only while
    it holds fewer than its `count` (never more live instances than asked for) and its lease ends after
    `lease_after` (ISO 8601 UTC, as stored). The caller takes the owner's and the stack's unit with
    `reserve` in the same transaction."""
    tx.update(
        "held",
        (annex_pk(annex_id), META),
        "ADD held :one",
        condition="#s = :running AND held < :count AND lease_expires_at > :after",
        names={"#s": "state"},
        values={":one": 1, ":running": running, ":count": count, ":after": lease_after},
    )


def live_units(item: dict[str, Any] | None) -> int:
    """The owner's units in use, from their QUOTA item (None: they never had any)."""
    return int(item.get(LIVE, 0)) if item else 0
