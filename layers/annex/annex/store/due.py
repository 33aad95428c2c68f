"""The sparse, write-sharded `due` index: what the sweeps must look at now.

Only live annexes (kind "lease", `due_at` = lease expiry), live instances (kind "reap", `due_at` = when
idle-reap must look at them) and budgeted live annexes (kind "budget", store/budgets.py) carry its keys, so
the sweeps read only what is due and never scan. An instance claimed for termination (`terminating`)
keeps its keys until the termination is recorded, so a crashed reap is finished by the next one. The index
is eventually consistent: callers re-read each record before acting on it.

Sharding: an item's partition key is `<kind>#<shard>` (`due_shard` in _table.py: a stable hash of the
item's own key), so no single partition key takes the fleet's writes; every query here reads every shard
(and, during the migration, the unsharded key older items may still carry) and merges them in due order.
The index projects keys only (KEYS_ONLY): an update that changes no key attribute writes nothing to it,
which is what lets most heartbeats leave the index alone (failsafe/rules.py `stored_check`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from annex.core.clock import from_epoch, to_epoch
from annex.store._table import (
    DUE_LEASE,
    DUE_REAP,
    INDEX_DUE,
    META,
    StoreBase,
    Table,
    annex_id_of,
    due_partitions,
    to_attrs,
)
from annex.store.records import InstanceKey


def due_items(
    table: Table, kind: str, until: datetime, *, after: datetime | None = None, limit: int = 1000
) -> Iterator[dict[str, Any]]:
    """The index entries of `kind` due by `until` (and, given `after`, due strictly after it), from every
    shard, earliest first. `limit` is the page size of each shard's Query (every page is read)."""
    if after is None:
        condition, values = "due_kind = :k AND due_at <= :until", {":until": to_epoch(until)}
    else:
        # due_at is whole seconds: (after, until] is BETWEEN after + 1 AND until.
        condition = "due_kind = :k AND due_at BETWEEN :after AND :until"
        values = {":after": to_epoch(after) + 1, ":until": to_epoch(until)}
    shards = [
        table.query(
            IndexName=INDEX_DUE,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=to_attrs({":k": partition, **values}),
            Limit=limit,
        )
        for partition in due_partitions(kind)
    ]
    return heapq.merge(*shards, key=lambda item: int(item["due_at"]))


class DueIndex(StoreBase):
    def due_leases(self, *, now: datetime, limit: int = 1000) -> Iterator[str]:
        """The ids of live annexes whose lease has passed by `now` (as the index last saw them)."""
        for item in due_items(self._table, DUE_LEASE, now, limit=limit):
            if item["sk"] == META:
                yield annex_id_of(item["pk"])

    def leases_due_by(
        self, until: datetime, *, after: datetime | None = None, limit: int = 1000
    ) -> Iterator[tuple[str, datetime]]:
        """(annex id, lease expiry) of live annexes whose lease ends by `until` (and after `after`, if
        given), as the index last saw them: what the lease timers must be armed for."""
        for item in due_items(self._table, DUE_LEASE, until, after=after, limit=limit):
            if item["sk"] == META:
                yield annex_id_of(item["pk"]), from_epoch(int(item["due_at"]))

    def due_instances(self, *, now: datetime, limit: int = 1000) -> Iterator[InstanceKey]:
        """Live (or claimed) instances idle-reap must look at by `now` (as the index last saw them)."""
        for item in due_items(self._table, DUE_REAP, now, limit=limit):
            if item["sk"].startswith("INST#"):
                yield InstanceKey(annex_id_of(item["pk"]), item["sk"].removeprefix("INST#"))
