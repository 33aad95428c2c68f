"""When each fail-safe sweep last succeeded (GET /health shows it), and how far ahead the lease-check has
armed lease timers (failsafe/lease_timer.py)."""

from __future__ import annotations

from datetime import datetime

from annex.core.clock import from_epoch, to_epoch, to_iso
from annex.store._table import STATUS, TIMERS, StoreBase, sweep_pk


class SweepStatusRecords(StoreBase):
    def record_sweep(self, name: str, *, now: datetime, due: int = 0) -> None:
        self._table.put({"pk": sweep_pk(name), "sk": STATUS, "last_success_at": to_iso(now), "due": due})

    def sweep_status(self, name: str) -> str | None:
        item = self._table.get((sweep_pk(name), STATUS), consistent=False)
        return item.get("last_success_at") if item else None

    def timers_armed_through(self, name: str) -> datetime | None:
        """Up to when sweep `name` has armed every lease timer (None before its first arming)."""
        item = self._table.get((sweep_pk(name), TIMERS), consistent=False)
        return from_epoch(int(item["armed_through"])) if item else None

    def record_timers_armed(self, name: str, *, through: datetime) -> bool:
        """Move the mark forward to `through`; never back (a late, overlapping run leaves it alone).
        False if the mark was already at or past `through`."""
        return self._table.update(
            (sweep_pk(name), TIMERS),
            "SET armed_through = :t",
            condition="attribute_not_exists(armed_through) OR armed_through < :t",
            values={":t": to_epoch(through)},
        )
