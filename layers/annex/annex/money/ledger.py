"""The owner's month ledger: what an owner's ended annexes ran, month by month, so admission control reads
one ledger item plus the owner's live annexes instead of every annex the owner keeps. Pure functions.

An annex is settled into the ledger once, by the transaction that ends it (store/ledger.py): for every
month from its creation to its end, the billed seconds of each of its runs within that month, summed per
price key (instance type, market, zone), and one annex counted. Instances still recorded live when the
annex ends are costed up to that instant (the sweep that ends an annex marks its instances ended at the
same instant). Seconds, not dollars, are kept so that reading the ledger prices them with today's price
book, exactly as the full recomputation (`annex_month_spend`) prices every run, spot runs included.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal

from annex.core.models import LIVE_INSTANCE_STATES, Annex, Instance, Market
from annex.money.budgets import clipped_seconds, month_bounds, month_of
from annex.money.cost import HOUR
from annex.pricing.prices import PriceBook

MonthSeconds = dict[str, dict[str, int]]  # month -> price key -> billed seconds


def price_key(instance_type: str, market: Market, zone: str | None) -> str:
    return f"{instance_type}#{market.value}#{zone or ''}"


def months_between(first: datetime, last: datetime) -> Iterator[str]:
    """Every month from the one holding `first` to the one holding `last`, in order."""
    month = month_of(first)
    end = month_of(last)
    while month <= end:
        yield month
        month = month_of(month_bounds(month)[1])


def settled_seconds(annex: Annex, instances: Iterable[Instance], *, ended_at: datetime) -> MonthSeconds:
    """What an annex ending at `ended_at` ran, per month it overlaps (each such month present, even with
    nothing run: a failed launch counts as an annex with no spend)."""
    instances = list(instances)
    runs = []
    for inst in instances:
        live = inst.state in LIVE_INSTANCE_STATES or inst.ended_at is None
        runs.append((inst, ended_at if live else (inst.ended_at or ended_at)))
    first = min([annex.created_at, *(i.launched_at for i, _ in runs)])
    last = max([ended_at, *(end for _, end in runs)])
    out: MonthSeconds = {}
    for month in months_between(first, last):
        lo, hi = month_bounds(month)
        in_month: dict[str, int] = {}
        for inst, end in runs:
            seconds = clipped_seconds(inst.launched_at, end, lo, hi)
            if seconds:
                key = price_key(inst.instance_type, inst.market, inst.zone)
                in_month[key] = in_month.get(key, 0) + seconds
        if annex.created_at < hi and ended_at >= lo:  # the months the full recomputation counts it in
            out[month] = in_month
    return out


def priced(seconds: Mapping[str, int], book: PriceBook) -> Decimal:
    """The ledger's seconds at the book's prices (a type with no price adds nothing, as in `annex_cost`)."""
    total = Decimal(0)
    for key, n in seconds.items():
        instance_type, market, zone = key.split("#", 2)
        price = book.get(instance_type, Market(market))
        if price is not None:
            total += price.for_zone(zone or None) * n / HOUR
    return total
