"""History events: one item per event in the annex's partition, ordered by their sort key."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime

from annex.core.clock import to_iso
from annex.core.models import HistoryEvent
from annex.store._table import Table, Transaction, annex_pk

Ticks = Callable[[], int]


class History:
    """`ticks` orders events within one second of logical time: it must not go backwards across calls
    (the store is given `time.time_ns`; tests may give a counter). The logical time `at` comes first."""

    def __init__(self, table: Table, ticks: Ticks) -> None:
        self._table = table
        self._ticks = ticks

    def item(self, annex_id: str, *, at: datetime, actor: str, action: str, detail: str) -> dict[str, object]:
        event = HistoryEvent(at=at, actor=actor, action=action, detail=detail)
        item = event.model_dump(mode="json")
        sk = f"EVENT#{to_iso(at)}#{self._ticks():020d}{secrets.token_hex(2)}"
        item.update(pk=annex_pk(annex_id), sk=sk)
        return item

    def add_to(
        self, tx: Transaction, annex_id: str, *, at: datetime, actor: str, action: str, detail: str
    ) -> None:
        """The event, as the operation `event` of a transaction."""
        tx.put("event", self.item(annex_id, at=at, actor=actor, action=action, detail=detail))

    def add(self, annex_id: str, *, at: datetime, actor: str, action: str, detail: str = "") -> None:
        self._table.put(self.item(annex_id, at=at, actor=actor, action=action, detail=detail))
