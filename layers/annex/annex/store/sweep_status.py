"""When each fail-safe sweep last succeeded (GET /health shows it)."""

from __future__ import annotations

from datetime import datetime

from annex.core.clock import to_iso
from annex.store._table import STATUS, StoreBase, sweep_pk


class SweepStatusRecords(StoreBase):
    def record_sweep(self, name: str, *, now: datetime, due: int = 0) -> None:
        self._table.put({"pk": sweep_pk(name), "sk": STATUS, "last_success_at": to_iso(now), "due": due})

    def sweep_status(self, name: str) -> str | None:
        item = self._table.get((sweep_pk(name), STATUS), consistent=False)
        return item.get("last_success_at") if item else None
