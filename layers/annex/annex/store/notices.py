"""Which notices went out: one item per annex and notice, so each is sent once.

| item   | pk          | sk                          |
|--------|-------------|-----------------------------|
| notice | ANNEX#<id>  | NOTICE#<kind>#<occasion>    |

`occasion` tells apart notices of the same kind for different moments (the lease-ending notice for
each lease expiry: an extension earns a new one). `EndedTrigger` reads the stream record of an annex
that has just ended (the stream carries the table's keys, so reading them is the store's business).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from annex.core.clock import to_epoch, to_iso
from annex.store._table import StoreBase, annex_id_of, annex_pk


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


class EndedTrigger(BaseModel):
    """The stream record of an annex that has just ended (or failed): its META item modified from a
    live state. The template's FilterCriteria let only these through; the handler checks again."""

    model_config = ConfigDict(defer_build=True)

    event_name: Literal["MODIFY"]
    pk: str = Field(pattern=r"^ANNEX#ax-[0-9a-f]{16}$")
    sk: Literal["META"]
    new_state: Literal["ended", "failed"]
    old_state: Literal["requested", "launching", "running"]

    @property
    def annex_id(self) -> str:
        return annex_id_of(self.pk)

    @classmethod
    def parse(
        cls, event_name: object, keys: dict[str, Any], new_image: dict[str, Any], old_image: dict[str, Any]
    ) -> EndedTrigger | None:
        try:
            return cls.model_validate(
                {
                    "event_name": event_name,
                    "pk": keys.get("pk"),
                    "sk": keys.get("sk"),
                    "new_state": new_image.get("state"),
                    "old_state": old_image.get("state"),
                }
            )
        except ValidationError:
            return None
