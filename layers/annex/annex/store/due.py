"""The sparse `due` index: what the sweeps must look at now.

Only live annexes (`due_kind` = "lease", `due_at` = lease expiry) and live instances (`due_kind` =
"reap", `due_at` = when idle-reap must look at them) carry its keys, so the sweeps read only what is due
and never scan. An instance claimed for termination (`terminating`) keeps its keys until the termination
is recorded, so a crashed reap is finished by the next one. The index is eventually consistent: callers
re-read each record before acting on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from annex.core.clock import from_epoch, to_epoch
from annex.store._table import DUE_LEASE, DUE_REAP, INDEX_DUE, META, StoreBase, annex_id_of, to_attrs
from annex.store.records import InstanceKey


class DueIndex(StoreBase):
    def due_leases(self, *, now: datetime, limit: int = 1000) -> Iterator[str]:
        """The ids of live annexes whose lease has passed by `now` (as the index last saw them)."""
        for item in self._due(DUE_LEASE, now, limit):
            if item["sk"] == META:
                yield annex_id_of(item["pk"])

    def leases_due_by(self, until: datetime, *, limit: int = 1000) -> Iterator[tuple[str, datetime]]:
        """(annex id, lease expiry) of live annexes whose lease ends by `until` (as the index last saw
        them): what the lease timers must be armed for."""
        for item in self._due(DUE_LEASE, until, limit):
            if item["sk"] == META:
                yield annex_id_of(item["pk"]), from_epoch(int(item["due_at"]))

    def due_instances(self, *, now: datetime, limit: int = 1000) -> Iterator[InstanceKey]:
        """Live (or claimed) instances idle-reap must look at by `now` (as the index last saw them)."""
        for item in self._due(DUE_REAP, now, limit):
            if item["sk"].startswith("INST#"):
                yield InstanceKey(annex_id_of(item["pk"]), item["sk"].removeprefix("INST#"))

    def _due(self, kind: str, now: datetime, limit: int) -> Iterator[dict[str, str]]:
        return self._table.query(
            IndexName=INDEX_DUE,
            KeyConditionExpression="due_kind = :k AND due_at <= :now",
            ExpressionAttributeValues=to_attrs({":k": kind, ":now": to_epoch(now)}),
            Limit=limit,
        )
