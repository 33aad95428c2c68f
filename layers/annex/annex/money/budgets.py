"""Budgets. Pure functions: costs, prices and `now` are passed in.

- Per annex: the time the annex's cost reaches its budget is a due time, like its lease end. It is kept
  early, never late: before launch it assumes every requested instance at the dearest allowed type,
  and once running the set of live instances can only shrink. A spot price rise moves it earlier (the
  prices function recomputes it). The budget check ends the annex (`budget-reached`) when the budget
  would be passed before the next check, so it is stopped within one check period.
- Per owner per month: a request or extension whose forecast would take the owner's month past their
  budget is refused with the figures (admission control).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from annex.core.errors import QuotaExceeded
from annex.core.models import Annex, Instance
from annex.money.cost import HOUR, AnnexCost, annex_cost, billed_seconds, budget_reached_at, usd
from annex.pricing.prices import PriceBook

# The budget check runs every minute: an annex is ended when its budget would be reached before the
# next run, so the cost never passes the budget by more than a check's own run time.
CHECK_PERIOD = timedelta(minutes=1)


class BudgetExceeded(QuotaExceeded):
    """The forecast would pass a budget (HTTP 409, like the instance quota)."""

    code = "BudgetExceeded"


def budget_due_at(budget: Decimal, cost: AnnexCost, *, lead: timedelta = CHECK_PERIOD) -> datetime | None:
    """When the budget check must look at this annex: a check period before its cost reaches the
    budget at the current rate (None: it never will, nothing runs)."""
    reached = budget_reached_at(budget, cost)
    return None if reached is None else max(cost.at, reached - lead)


def over_budget(budget: Decimal, cost: AnnexCost, *, lead: timedelta = CHECK_PERIOD) -> bool:
    """True when the cost has reached the budget or would before the next check."""
    due = budget_due_at(budget, cost, lead=lead)
    return due is not None and due <= cost.at


# --- months ------------------------------------------------------------------------------------------


def month_of(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m")


def month_bounds(month: str) -> tuple[datetime, datetime]:
    start = datetime.strptime(month + "-01", "%Y-%m-%d").replace(tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def clipped_seconds(start: datetime, end: datetime, lo: datetime, hi: datetime) -> int:
    """The billed seconds of a run within [lo, hi): the 60-second minimum belongs to the month the run
    started in."""
    if end <= lo or start >= hi:
        return 0
    if lo <= start and end <= hi:
        return billed_seconds(start, end)
    a, b = max(start, lo), min(end, hi)
    seconds = int((b - a).total_seconds())
    if start >= lo:  # started in the window, runs past it
        seconds = max(seconds, 60)
    return seconds


def _clipped(hourly: Decimal, start: datetime, end: datetime, lo: datetime, hi: datetime) -> Decimal:
    """A run's cost within [lo, hi)."""
    seconds = clipped_seconds(start, end, lo, hi)
    return hourly * seconds / HOUR if seconds else Decimal(0)


@dataclass(frozen=True)
class MonthSpend:
    """One annex's share of a month: spent so far, and committed (spent plus its live instances until
    its lease ends, within the month)."""

    spent: Decimal
    committed: Decimal
    usd_per_hour: Decimal


def annex_month_spend(
    annex: Annex, instances: Iterable[Instance], book: PriceBook, *, month: str, now: datetime
) -> MonthSpend:
    lo, hi = month_bounds(month)
    cost = annex_cost(annex, list(instances), book, now=now)
    spent = Decimal(0)
    committed = Decimal(0)
    lease_end = max(annex.lease_expires_at, now)
    by_id = {i.instance_id: i for i in instances}
    for ic in cost.instances:
        inst = by_id[ic.instance_id]
        if ic.usd_per_hour is None:
            continue
        end = now if ic.live else (inst.ended_at or now)
        spent += _clipped(ic.usd_per_hour, inst.launched_at, end, lo, hi)
        committed += _clipped(ic.usd_per_hour, inst.launched_at, lease_end if ic.live else end, lo, hi)
    pending_rate = cost.usd_per_hour - sum((i.usd_per_hour or Decimal(0)) for i in cost.instances if i.live)
    if pending_rate > 0:  # not launched yet: the request's bound until the lease ends
        committed += _clipped(pending_rate, now, lease_end, lo, hi)
    return MonthSpend(
        spent=spent, committed=committed, usd_per_hour=cost.usd_per_hour if annex.live else Decimal(0)
    )


def admit(
    *,
    adds: Decimal | None,
    committed: Decimal,
    budget: Decimal | None,
    month: str,
    what: str,
    field: str,
) -> None:
    """Refuse (BudgetExceeded, naming the figures) when `adds` would take the month past `budget`."""
    if budget is None or adds is None:
        return
    left = budget - committed
    if adds > left:
        raise BudgetExceeded(
            f"{what} would add up to ${usd(adds)}, but only ${usd(max(left, Decimal(0)))} of your "
            f"${usd(budget)} budget for {month} is left (${usd(committed)} spent or committed by "
            "running annexes); ask for less, stop an annex, or ask a pool administrator to raise it",
            field=field,
        )
