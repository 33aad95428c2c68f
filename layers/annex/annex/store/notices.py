"""Which notices went out: one item per annex and notice, so each is sent once.

| item   | pk          | sk                          |
|--------|-------------|-----------------------------|
| notice | ANNEX#<id>  | NOTICE#<kind>#<occasion>    |

`occasion` tells apart notices of the same kind for different moments (the lease-ending notice for each
lease expiry: an extension earns a new one).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from annex.core.clock import to_epoch, to_iso
from annex.store._table import StoreBase, annex_pk


class NoticeRecords(StoreBase):
    def notice_sent(self, annex_id: str, kind: str, occasion: str) -> bool:
        return self._table.get((annex_pk(annex_id), f"NOTICE#{kind}#{occasion}")) is not None

    def record_notice(
        self, annex_id: str, kind: str, occasion: str, *, now: datetime, retention: timedelta
    ) -> bool:
        """False if it was already recorded."""
        return self._table.put(
            {
                "pk": annex_pk(annex_id),
                "sk": f"NOTICE#{kind}#{occasion}",
                "sent_at": to_iso(now),
                "expires_at": to_epoch(now + retention),
            },
            condition="attribute_not_exists(pk)",
        )
