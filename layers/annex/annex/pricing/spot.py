"""Spot prices from EC2's spot price history (`ec2:DescribeSpotPriceHistory`).

Asked with StartTime = EndTime = now, the API returns, per zone, the last price change before that
moment, which is the price in effect now. One figure per type: the dearest zone's (see `prices`), with
every zone's kept for instances whose zone is known.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from annex.core.models import Market
from annex.pricing.prices import Price, PriceSourceKind

log = logging.getLogger(__name__)
PRODUCT = "Linux/UNIX"


def spot_prices(ec2: Any, region: str, instance_types: Sequence[str], *, now: datetime) -> list[Price]:
    """The spot price in effect now for each type (one paginated call for all types)."""
    if not instance_types:
        return []
    latest: dict[str, dict[str, tuple[datetime, Decimal]]] = defaultdict(dict)
    kwargs: dict[str, Any] = {
        "InstanceTypes": list(instance_types),
        "ProductDescriptions": [PRODUCT],
        "StartTime": now,
        "EndTime": now,
        "MaxResults": 1000,
    }
    while True:
        page = ec2.describe_spot_price_history(**kwargs)
        for row in page.get("SpotPriceHistory", []):
            try:
                usd = Decimal(str(row["SpotPrice"]))
            except (KeyError, InvalidOperation):
                continue
            zone, itype, at = row.get("AvailabilityZone"), row.get("InstanceType"), row.get("Timestamp")
            if not zone or not itype or at is None or usd <= 0:
                continue
            seen = latest[itype].get(zone)
            if seen is None or at > seen[0]:
                latest[itype][zone] = (at, usd)
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    out = []
    for itype in instance_types:
        zones = latest.get(itype)
        if not zones:
            continue
        out.append(
            Price(
                region=region,
                instance_type=itype,
                market=Market.SPOT,
                usd_per_hour=max(usd for _, usd in zones.values()),
                zones={z: usd for z, (_, usd) in sorted(zones.items())},
                source=PriceSourceKind.SPOT_HISTORY,
                source_detail=f"ec2:DescribeSpotPriceHistory {PRODUCT}, the dearest of {len(zones)} zone(s)",
                as_of=max(at for at, _ in zones.values()),
                fetched_at=now,
            )
        )
    return out
