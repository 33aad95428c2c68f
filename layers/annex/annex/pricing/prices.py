"""Price records and the price book an estimate is made from.

A `Price` is one figure in USD per instance-hour for (region, instance type, market), with its source and
the time it was true. Spot prices vary by availability zone: a spot `Price` keeps each zone's figure and
its headline figure is the dearest zone's, because a spot annex may launch in any of the stack's zones
(capacity-optimized allocation): an estimate or a budget's due time made from the dearest zone is never
late. An instance whose zone is known is costed at its own zone's price.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from importlib import resources
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from annex.core.clock import parse_time, to_iso
from annex.core.models import Market
from annex.money.units import Usd

SNAPSHOT_FILE = "snapshot.json"

_Time = Annotated[datetime, BeforeValidator(parse_time), PlainSerializer(to_iso, return_type=str)]


class PriceSourceKind:
    PRICE_LIST = "aws-price-list"  # pricing:GetProducts
    SPOT_HISTORY = "ec2-spot-price-history"  # ec2:DescribeSpotPriceHistory
    SNAPSHOT = "snapshot"  # the dated file shipped with the project


class Price(BaseModel):
    """One price, as stored and as shown next to every estimate made from it."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    region: str
    instance_type: str
    market: Market
    usd_per_hour: Usd = Field(gt=0, description="USD per instance-hour (spot: the dearest zone).")
    zones: dict[str, Usd] = Field(default_factory=dict, description="Spot only: USD per hour per zone.")
    source: str = Field(
        description="Where the figure came from: aws-price-list, ec2-spot-price-history, snapshot."
    )
    source_detail: str = Field(default="", description="The API call or file, and its filters.")
    as_of: _Time = Field(description="When the figure was true (publication, spot change, or snapshot date).")
    fetched_at: _Time = Field(description="When this stack read it.")

    def for_zone(self, zone: str | None) -> Decimal:
        if zone and zone in self.zones:
            return self.zones[zone]
        return self.usd_per_hour


@dataclass(frozen=True)
class PriceBook:
    """The prices an estimate may use, keyed by (instance type, market). Refreshed prices win over the
    snapshot, which is the fallback before the first refresh (and the local stack's only source)."""

    region: str
    prices: Mapping[tuple[str, Market], Price] = field(default_factory=dict)

    def get(self, instance_type: str, market: Market) -> Price | None:
        """The price of one type in one market. Without a spot price, the on-demand price stands in as
        an upper bound (EC2's default maximum spot price is the on-demand price), and says so."""
        found = self.prices.get((instance_type, market))
        if found is not None or market is Market.ON_DEMAND:
            return found
        on_demand = self.prices.get((instance_type, Market.ON_DEMAND))
        if on_demand is None:
            return None
        return on_demand.model_copy(
            update={
                "market": Market.SPOT,
                "source_detail": "no spot price known: the on-demand price bounds it "
                f"({on_demand.source_detail})",
            }
        )

    def dearest(self, instance_types: Iterable[str], market: Market) -> Price | None:
        """The dearest of these types (an upper bound when any of them may launch); None if any is
        unknown, since an estimate that silently skips a type would be low."""
        found = [self.get(t, market) for t in instance_types]
        if not found or any(p is None for p in found):
            return None
        return max((p for p in found if p is not None), key=lambda p: p.usd_per_hour)

    def merged_over(self, fallback: PriceBook) -> PriceBook:
        return PriceBook(self.region, {**fallback.prices, **self.prices})


class Snapshot(BaseModel):
    """The shape of `snapshot.json`: who published the figures and when."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    source: str
    as_of: _Time
    region: str
    note: str = ""
    on_demand: dict[str, Decimal] = Field(alias="on-demand")
    spot: dict[str, dict[str, Decimal]] = Field(default_factory=dict, description="type -> zone -> USD/h")

    def prices(self) -> list[Price]:
        detail = f"{SNAPSHOT_FILE}: {self.source}"
        out = [
            Price(
                region=self.region,
                instance_type=t,
                market=Market.ON_DEMAND,
                usd_per_hour=usd,
                source=PriceSourceKind.SNAPSHOT,
                source_detail=detail,
                as_of=self.as_of,
                fetched_at=self.as_of,
            )
            for t, usd in sorted(self.on_demand.items())
        ]
        for t, zones in sorted(self.spot.items()):
            if zones:
                out.append(
                    Price(
                        region=self.region,
                        instance_type=t,
                        market=Market.SPOT,
                        usd_per_hour=max(zones.values()),
                        zones=dict(sorted(zones.items())),
                        source=PriceSourceKind.SNAPSHOT,
                        source_detail=detail,
                        as_of=self.as_of,
                        fetched_at=self.as_of,
                    )
                )
        return out


def load_snapshot(text: str | None = None) -> Snapshot:
    """The snapshot shipped in this package (or `text`, for tests)."""
    if text is None:
        text = resources.files("annex.pricing").joinpath(SNAPSHOT_FILE).read_text(encoding="utf-8")
    data: Any = json.loads(text, parse_float=Decimal)
    return Snapshot.model_validate(data)


def snapshot_book(region: str, snapshot: Snapshot | None = None) -> PriceBook:
    """The snapshot's prices for `region` (empty when the snapshot is for another region)."""
    snap = snapshot or load_snapshot()
    if snap.region != region:
        return PriceBook(region)
    return PriceBook(region, {(p.instance_type, p.market): p for p in snap.prices()})


def book_of(region: str, prices: Iterable[Price]) -> PriceBook:
    return PriceBook(region, {(p.instance_type, p.market): p for p in prices if p.region == region})
