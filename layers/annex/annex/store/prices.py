"""Instance prices per region, type and market, as the prices function last read them.

| item  | pk              | sk                    |
|-------|-----------------|-----------------------|
| price | PRICE#<region>  | <market>#<type>       |

One Query reads a region's whole book. Until the first refresh (and on the local stack, which loads the
shipped snapshot into these same records) the snapshot fills the gaps.
"""

from __future__ import annotations

from collections.abc import Iterable

from annex.pricing.prices import Price, PriceBook, book_of, snapshot_book
from annex.store._table import StoreBase


def price_pk(region: str) -> str:
    return f"PRICE#{region}"


class PriceRecords(StoreBase):
    def put_prices(self, prices: Iterable[Price]) -> int:
        """Write each price (replacing the last one for its region, type and market)."""
        n = 0
        for price in prices:
            item = price.model_dump(mode="json")
            item.update(pk=price_pk(price.region), sk=f"{price.market.value}#{price.instance_type}")
            self._table.put(item)
            n += 1
        return n

    def stored_prices(self, region: str) -> list[Price]:
        return [
            Price.model_validate({k: v for k, v in item.items() if k not in ("pk", "sk")})
            for item in self._table.query_partition(price_pk(region))
        ]

    def price_book(self, region: str) -> PriceBook:
        """The stored prices for `region`, over the shipped snapshot."""
        return book_of(region, self.stored_prices(region)).merged_over(snapshot_book(region))
