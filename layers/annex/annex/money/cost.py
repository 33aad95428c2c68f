"""Accrued cost and forecasts. Pure functions: prices and `now` are passed in.

EC2 bills Linux instances per second with a minimum of 60 seconds, from launch until termination
(https://aws.amazon.com/ec2/pricing/on-demand/ "per-second billing"). An instance is costed at its own
type's price (spot: its own zone's when known), from `launched_at` to `ended_at` (or now, while it runs).
The forecast is what the annex costs if every live instance runs until the lease ends; before launch
it is the requested count at the dearest allowed type, an upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from annex.core.models import LIVE_INSTANCE_STATES, Annex, AnnexState, Instance, Market
from annex.pricing.prices import Price, PriceBook

MINIMUM_BILLED = timedelta(seconds=60)
HOUR = Decimal(3600)
CENT = Decimal("0.01")


def billed_seconds(start: datetime, end: datetime) -> int:
    """Whole seconds EC2 bills for a run from `start` to `end` (at least 60 once it has started)."""
    return max(int(MINIMUM_BILLED.total_seconds()), int((end - start).total_seconds()))


def billed_seconds_of(duration: timedelta) -> int:
    return max(int(MINIMUM_BILLED.total_seconds()), int(duration.total_seconds()))


def run_cost(usd_per_hour: Decimal, start: datetime, end: datetime) -> Decimal:
    return usd_per_hour * billed_seconds(start, end) / HOUR


def usd(value: Decimal) -> Decimal:
    """Rounded to the cent, for display and for comparing with a budget in cents."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class InstanceCost:
    instance_id: str
    usd_per_hour: Decimal | None  # None: no price known for its type
    accrued: Decimal
    live: bool


@dataclass(frozen=True)
class AnnexCost:
    """An annex's money at `at`. `unpriced` lists types with no known price (the figures then leave
    those out, and say so)."""

    at: datetime
    accrued: Decimal
    usd_per_hour: Decimal  # what the live instances (or, before launch, the request) cost per hour now
    forecast: Decimal  # accrued + the live instances until the lease ends
    instances: list[InstanceCost] = field(default_factory=list)
    prices: list[Price] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)
    upper_bound: bool = False  # before launch, from the count and the dearest type

    @property
    def complete(self) -> bool:
        return not self.unpriced


def _instance_price(book: PriceBook, instance: Instance) -> tuple[Price | None, Decimal | None]:
    price = book.get(instance.instance_type, instance.market)
    if price is None:
        return None, None
    return price, price.for_zone(instance.zone)


def annex_cost(annex: Annex, instances: Sequence[Instance], book: PriceBook, *, now: datetime) -> AnnexCost:
    lease_end = max(annex.lease_expires_at, now)
    accrued = Decimal(0)
    rate = Decimal(0)
    forecast = Decimal(0)
    costs: list[InstanceCost] = []
    used: dict[tuple[str, Market], Price] = {}
    unpriced: set[str] = set()
    for inst in instances:
        price, hourly = _instance_price(book, inst)
        live = inst.state in LIVE_INSTANCE_STATES or inst.ended_at is None
        if price is None or hourly is None:
            unpriced.add(inst.instance_type)
            costs.append(InstanceCost(inst.instance_id, None, Decimal(0), live))
            continue
        used[(inst.instance_type, inst.market)] = price
        end = now if live else (inst.ended_at or now)
        spent = run_cost(hourly, inst.launched_at, end)
        accrued += spent
        if live:
            rate += hourly
            forecast += run_cost(hourly, inst.launched_at, max(lease_end, end))
        else:
            forecast += spent
        costs.append(InstanceCost(inst.instance_id, hourly, spent, live))
    upper_bound = False
    if annex.state in (AnnexState.REQUESTED, AnnexState.LAUNCHING):
        # Instances may still appear: bound the rate by the request (the dearest of its types).
        price = book.dearest(annex.instance_types, annex.market)
        if price is None:
            unpriced.update(t for t in annex.instance_types if book.get(t, annex.market) is None)
        else:
            used[(price.instance_type, price.market)] = price
            pending = annex.count - len(costs)
            if pending > 0:
                upper_bound = True
                rate += price.usd_per_hour * pending
                forecast += pending * run_cost(price.usd_per_hour, now, lease_end)
    return AnnexCost(
        at=now,
        accrued=accrued,
        usd_per_hour=rate,
        forecast=forecast,
        instances=costs,
        prices=sorted(used.values(), key=lambda p: (p.instance_type, p.market.value)),
        unpriced=sorted(unpriced),
        upper_bound=upper_bound,
    )


def request_cost(
    count: int, instance_types: Sequence[str], market: Market, lease: timedelta, book: PriceBook
) -> tuple[Decimal | None, Price | None]:
    """What a request would cost if it ran the whole lease at the dearest of its types."""
    price = book.dearest(instance_types, market)
    if price is None:
        return None, None
    return count * price.usd_per_hour * billed_seconds_of(lease) / HOUR, price


def extension_cost(annex_cost_now: AnnexCost, added: timedelta) -> Decimal:
    """What extending the lease by `added` adds: today's hourly rate for that long."""
    return annex_cost_now.usd_per_hour * Decimal(int(added.total_seconds())) / HOUR


def budget_reached_at(budget: Decimal, cost: AnnexCost) -> datetime | None:
    """When the accrued cost reaches `budget` at today's rate (None: never, nothing runs)."""
    if cost.accrued >= budget:
        return cost.at
    if cost.usd_per_hour <= 0:
        return None
    seconds = (budget - cost.accrued) * HOUR / cost.usd_per_hour
    return cost.at + timedelta(seconds=int(seconds))
