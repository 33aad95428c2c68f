"""What the API says a request or an extension costs (POST /estimates), as the client shows it.

The client carries no prices. The API's come from the AWS Price List Query API, EC2's spot price history,
or the stack's dated price snapshot, and every figure here names its source and date. It is an estimate
(EC2 bills per second, 60 s minimum), not a bill: Cost Explorer has the bill.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SOURCES = {
    "aws-price-list": "AWS Price List API",
    "ec2-spot-price-history": "EC2 spot price history",
    "snapshot": "the stack's price snapshot",
}


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def source_text(price: Mapping[str, Any]) -> str:
    """`AWS Price List API, as of 2026-11-01`; spot bounded by on-demand says so."""
    source = SOURCES.get(str(price.get("source", "")), str(price.get("source", "unknown source")))
    as_of = str(price.get("as_of", ""))[:10]
    text = f"{source}, as of {as_of}" if as_of else source
    if str(price.get("source_detail", "")).startswith("no spot price known"):
        text += "; no spot price known, so the on-demand price bounds it"
    return text


@dataclass(frozen=True)
class Estimate:
    count: int
    hours: float
    usd_per_hour: float | None  # per instance; for several possible types, the dearest
    usd: float | None
    upper_bound: bool  # spot, several possible types, or capped by the annex's budget
    source: str = ""

    @property
    def instance_hours(self) -> float:
        return self.count * self.hours

    def text(self) -> str:
        if self.usd is None or self.usd_per_hour is None:
            return "price unknown (the API has no price for this instance type here)"
        bound = "at most" if self.upper_bound else "about"
        return (
            f"{bound} ${self.usd:,.2f} = {self.count} x {_hours(self.hours)} x ${self.usd_per_hour:g}/h "
            f"(an estimate: {self.source})"
        )


def _hours(hours: float) -> str:
    """`4h`, `1.5h`, `30m`; an uneven length to the minute (`3h22m`), not `3.37667h`."""
    minutes = round(hours * 3600) // 60  # whole minutes, as the lease lengths beside it are printed
    if minutes < 60:
        return f"{hours * 60:g}m"
    if minutes % 60 == 0 or minutes % 30 == 0:
        return f"{minutes / 60:g}h"
    return f"{minutes // 60}h{minutes % 60}m"


def estimate(
    quote: Mapping[str, Any], count: int, hours: float, *, spot: bool, several: bool = False
) -> Estimate:
    """The API's quote for `count` instances for `hours` (the whole lease)."""
    price = quote.get("price") or {}
    per_hour = _float(price.get("usd_per_hour"))
    usd = _float(quote.get("adds_usd"))
    capped = per_hour is not None and usd is not None and usd + 0.005 < count * hours * per_hour
    return Estimate(
        count, hours, per_hour, usd, spot or several or capped, source_text(price) if price else ""
    )


def month_text(quote: Mapping[str, Any]) -> str | None:
    """The owner's month against their budget, or None when there is no monthly budget."""
    budget = _float(quote.get("monthly_budget_usd"))
    if budget is None:
        return None
    committed = _float(quote.get("month_committed_usd")) or 0.0
    left = _float(quote.get("remaining_usd")) or 0.0
    return (
        f"${committed:,.2f} of your ${budget:,.2f} budget for {quote.get('month')} spent or committed; "
        f"${left:,.2f} left"
    )
