"""The prices function's one job: read the current prices of the allowed types, store them, and move
the budget due time of every budgeted live annex to match them (a spot price rise brings it earlier).

Budgeted live annexes are read from the `due` index (kind "budget", any due time): the cost grows with
them, never with the table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from annex.money.cost import annex_cost
from annex.money.service import next_budget_look
from annex.pricing.pricelist import on_demand_prices
from annex.pricing.prices import PriceBook
from annex.pricing.spot import spot_prices
from annex.store import AnnexStore

log = logging.getLogger(__name__)
FOREVER = timedelta(days=3650)


@dataclass
class PriceRefresh:
    on_demand: int = 0
    spot: int = 0
    missing: dict[str, str] = field(default_factory=dict)
    budgets_rescheduled: int = 0
    failures: dict[str, Exception] = field(default_factory=dict)


def refresh_prices(
    store: AnnexStore,
    pricing: Any,
    ec2: Any,
    *,
    region: str,
    instance_types: Sequence[str],
    now: datetime,
    retention: timedelta,
) -> PriceRefresh:
    out = PriceRefresh()
    on_demand, out.missing = on_demand_prices(pricing, region, instance_types, now=now)
    out.on_demand = store.put_prices(on_demand)
    try:
        out.spot = store.put_prices(spot_prices(ec2, region, instance_types, now=now))
    except Exception as exc:
        log.exception("could not read the spot prices")
        out.failures["spot prices"] = exc
    reschedule_budgets(store, store.price_book(region), now=now, retention=retention, out=out)
    return out


def reschedule_budgets(
    store: AnnexStore, book: PriceBook, *, now: datetime, retention: timedelta, out: PriceRefresh
) -> None:
    for annex_id in list(store.due_budgets(now=now + FOREVER)):
        try:
            record = store.get_annex_record(annex_id)
            state = store.budget_due(annex_id)
            if record is None or not record.annex.live or record.annex.budget_usd is None or state is None:
                continue  # the budget check clears it when it comes due
            annex = record.annex
            cost = annex_cost(annex, store.list_instances(annex_id), book, now=now)
            due = next_budget_look(record.annex.budget_usd, cost, warned=state.warned)
            store.schedule_budget(annex_id, due, expires=max(annex.lease_expires_at, now) + retention)
            out.budgets_rescheduled += 1
        except Exception as exc:
            log.exception("could not reschedule the budget of %s", annex_id)
            out.failures[annex_id] = exc
