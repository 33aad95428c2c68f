"""A rough cost estimate shown before `request` spends money. An estimate, not a quote: list prices for
Linux on-demand instances in one region, for the instance types the template allows by default. Any other
type is "price unknown"; spot is usually cheaper, so its estimate is an upper bound."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PRICES_AS_OF = "2024"
PRICE_REGION = "us-east-1"
PRICE_SOURCE = f"AWS on-demand list price, Linux, {PRICE_REGION}, {PRICES_AS_OF}"
ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    "c6i.xlarge": 0.17,
    "c6i.2xlarge": 0.34,
    "c7i.xlarge": 0.1785,
    "c7i.2xlarge": 0.357,
    "m6i.xlarge": 0.192,
    "m7i.xlarge": 0.2016,
}


@dataclass(frozen=True)
class Estimate:
    count: int
    hours: float
    usd_per_hour: float | None  # per instance; for several possible types, the dearest
    usd: float | None
    upper_bound: bool  # spot, or several possible types

    @property
    def instance_hours(self) -> float:
        return self.count * self.hours

    def text(self) -> str:
        if self.usd is None or self.usd_per_hour is None:
            return "price unknown (no list price for this instance type in the client's table)"
        bound = "at most" if self.upper_bound else "about"
        return (
            f"{bound} ${self.usd:,.2f} = {self.count} x {_hours(self.hours)} x ${self.usd_per_hour:g}/h "
            f"(an estimate: {PRICE_SOURCE})"
        )


def _hours(hours: float) -> str:
    """`4h`, `1.5h`, `30m`; an uneven length to the minute (`3h22m`), not `3.37667h`."""
    minutes = round(hours * 3600) // 60  # whole minutes, as the lease lengths beside it are printed
    if minutes < 60:
        return f"{hours * 60:g}m"
    if minutes % 60 == 0 or minutes % 30 == 0:
        return f"{minutes / 60:g}h"
    return f"{minutes // 60}h{minutes % 60}m"


def estimate(count: int, instance_types: Sequence[str], hours: float, *, spot: bool) -> Estimate:
    """Cost of `count` instances for `hours` (the whole lease: the most it can cost unless extended).
    With several possible types (spot without --type), the dearest one bounds the cost."""
    prices = [ON_DEMAND_USD_PER_HOUR.get(t) for t in instance_types]
    if not prices or any(p is None for p in prices):
        return Estimate(count, hours, None, None, spot or len(prices) > 1)
    per_hour = max(p for p in prices if p is not None)
    return Estimate(count, hours, per_hour, count * hours * per_hour, spot or len(prices) > 1)
