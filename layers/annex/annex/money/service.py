"""Money as the API serves it: estimates on annexes, quotes for requests and extensions with admission
control against the owner's monthly budget, budget due times, owner budgets and the spend report.

Admission control reads an owner's month from their ledger (store/ledger.py, money/ledger.py): one
TransactGetItems for the ledger and the owner's open annexes, one BatchGetItem for those annexes, and one
Query per open annex for its instances: the cost grows with the owner's live annexes (bounded by their
quota), not with the annexes they keep. The spend report reads every annex of the month (the by-owner
index and each annex's instances), the full recomputation the ledger is tested against.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from annex.core.config import MoneySettings
from annex.core.errors import Forbidden, PolicyViolation
from annex.core.models import Annex, AnnexDetail, Instance, Market
from annex.money.budgets import (
    BudgetExceeded,
    MonthSpend,
    admit,
    annex_month_spend,
    budget_due_at,
    month_bounds,
    month_of,
)
from annex.money.cost import AnnexCost, annex_cost, budget_reached_at, extension_cost, request_cost, usd
from annex.money.ledger import priced
from annex.money.models import (
    AnnexView,
    CostEstimate,
    OwnerBudget,
    OwnerSpend,
    Quote,
    SpendReport,
    remaining,
)
from annex.pricing.prices import Price, PriceBook
from annex.store import AnnexStore

PAGE = 100


@dataclass
class OwnerMonth:
    owner: str
    month: str
    annexes: int = 0
    spent: Decimal = Decimal(0)
    committed: Decimal = Decimal(0)
    usd_per_hour: Decimal = Decimal(0)
    ids: list[str] = field(default_factory=list)

    def add(self, annex_id: str, spend: MonthSpend) -> None:
        self.annexes += 1
        self.spent += spend.spent
        self.committed += spend.committed
        self.usd_per_hour += spend.usd_per_hour
        self.ids.append(annex_id)


class OwnerMonths:
    """Owners' months read from the store: the ledger for admission, every annex for the report."""

    def __init__(self, store: AnnexStore) -> None:
        self.store = store

    def _owner_annexes(self, owner: str | None) -> Iterator[Annex]:
        token: str | None = None
        while True:
            annexes, token = self.store.list_annexes(owner=owner, limit=PAGE, page_token=token)
            yield from annexes
            if not token:
                return

    def _months(
        self, annexes: Iterable[Annex], month: str, now: datetime, book: PriceBook
    ) -> dict[str, OwnerMonth]:
        lo, hi = month_bounds(month)
        out: dict[str, OwnerMonth] = {}
        for annex in annexes:
            if annex.created_at >= hi or (
                not annex.live and annex.ended_at is not None and annex.ended_at < lo
            ):
                continue
            spend = annex_month_spend(annex, self.store.list_instances(annex.id), book, month=month, now=now)
            out.setdefault(annex.owner, OwnerMonth(annex.owner, month)).add(annex.id, spend)
        return out

    def owner_month(self, owner: str, *, now: datetime, book: PriceBook) -> OwnerMonth:
        """The owner's current month: the ledger of their ended annexes, plus their open annexes read in
        full. An open annex that ended after the ledger was read is not in that ledger snapshot, so it is
        recomputed from its record like a live one: each annex is counted once."""
        month = month_of(now)
        ledger = self.store.owner_ledger(owner, month)
        settled = priced(ledger.seconds, book)
        out = OwnerMonth(owner, month, annexes=ledger.annexes, spent=settled, committed=settled)
        opened = self.store.get_annexes(ledger.open_ids) if ledger.open_ids else {}
        live = self._months((r.annex for r in opened.values()), month, now, book).get(owner)
        if live is not None:
            out.annexes += live.annexes
            out.spent += live.spent
            out.committed += live.committed
            out.usd_per_hour += live.usd_per_hour
            out.ids.extend(live.ids)
        return out

    def owner_month_in_full(self, owner: str, *, now: datetime, book: PriceBook) -> OwnerMonth:
        """The same month recomputed from every annex the owner keeps (what the ledger must agree with)."""
        month = month_of(now)
        found = self._months(self._owner_annexes(owner), month, now, book)
        return found.get(owner, OwnerMonth(owner, month))


class MoneyService(OwnerMonths):
    def __init__(self, store: AnnexStore, settings: MoneySettings) -> None:
        super().__init__(store)
        self.settings = settings

    # --- prices and estimates -------------------------------------------------------------------

    def book(self) -> PriceBook:
        return self.store.price_book(self.settings.region)

    def cost(
        self, annex: Annex, instances: list[Instance], now: datetime, book: PriceBook | None = None
    ) -> AnnexCost:
        return annex_cost(annex, instances, book or self.book(), now=now)

    def estimate(
        self, annex: Annex, instances: list[Instance], *, now: datetime, book: PriceBook | None = None
    ) -> CostEstimate:
        cost = self.cost(annex, instances, now, book)
        reached = None
        if annex.budget_usd is not None and annex.live:
            at = budget_reached_at(annex.budget_usd, cost)
            reached = at if at is not None and at < annex.lease_expires_at else None
        return CostEstimate.of(annex, cost, budget_reached_at=reached)

    def view(self, detail: AnnexDetail, *, now: datetime) -> AnnexView:
        estimate = self.estimate(detail, detail.instances, now=now)
        return AnnexView.model_validate({**detail.model_dump(), "cost": estimate})

    def owner_budget(self, owner: str) -> OwnerBudget:
        return owner_budget(self.store, owner, default=self.settings.default_monthly_budget)

    # --- quotes and admission -------------------------------------------------------------------

    def _quote(
        self,
        owner: str,
        *,
        adds: Decimal | None,
        price: Price | None,
        rate: Decimal | None,
        now: datetime,
        book: PriceBook,
    ) -> Quote:
        month = self.owner_month(owner, now=now, book=book)
        budget = self.owner_budget(owner).monthly_usd
        return Quote(
            adds_usd=usd(adds) if adds is not None else None,
            usd_per_hour=rate,
            price=price,
            month=month.month,
            month_spent_usd=usd(month.spent),
            month_committed_usd=usd(month.committed),
            monthly_budget_usd=budget,
            remaining_usd=remaining(budget, month.committed),
        )

    def quote_create(
        self,
        owner: str,
        *,
        count: int,
        instance_types: Iterable[str],
        market: Market,
        lease: timedelta,
        budget: Decimal | None,
        now: datetime,
        enforce: bool,
    ) -> Quote:
        """What a request would add (its whole lease at the dearest type, or its budget if lower), and
        with `enforce`, refuse it when that would pass the owner's monthly budget."""
        if budget is not None and budget > self.settings.max_annex_budget:
            raise PolicyViolation(
                f"a budget may be at most ${usd(self.settings.max_annex_budget)} here", field="budget"
            )
        book = self.book()
        adds, price = request_cost(count, list(instance_types), market, lease, book)
        if adds is not None and budget is not None:
            adds = min(adds, budget)
        rate = price.usd_per_hour * count if price is not None else None
        quote = self._quote(owner, adds=adds, price=price, rate=rate, now=now, book=book)
        return _admitted(quote, adds, what="this request", field="count", enforce=enforce)

    def quote_extend(self, annex: Annex, new_expiry: datetime, *, now: datetime, enforce: bool) -> Quote:
        book = self.book()
        cost = self.cost(annex, self.store.list_instances(annex.id), now, book)
        added = new_expiry - max(annex.lease_expires_at, now)
        adds = extension_cost(cost, added)
        if annex.budget_usd is not None:  # the budget stops it anyway: it cannot add more than what is left
            adds = min(adds, max(Decimal(0), annex.budget_usd - cost.forecast))
        quote = self._quote(annex.owner, adds=adds, price=None, rate=cost.usd_per_hour, now=now, book=book)
        return _admitted(quote, adds, what="this extension", field="by", enforce=enforce)

    # --- budget due times -----------------------------------------------------------------------

    def schedule_budget(
        self,
        annex: Annex,
        instances: list[Instance],
        *,
        now: datetime,
        retention: timedelta,
        book: PriceBook | None = None,
        warned: bool | None = None,
    ) -> datetime | None:
        """Write when the budget check must next look at this annex (its budget reached a check early,
        or 80% of it for the warning). Before launch, the count at the dearest type: never late."""
        if annex.budget_usd is None:
            return None
        cost = self.cost(annex, instances, now, book)
        due = next_budget_look(annex.budget_usd, cost, warned=bool(warned))
        self.store.schedule_budget(
            annex.id,
            due if annex.live else None,
            expires=max(annex.lease_expires_at, now) + retention,
            warned=warned,
        )
        return due

    def set_budget(
        self, annex: Annex, budget: Decimal, *, actor: str, now: datetime, retention: timedelta
    ) -> Annex:
        """Set or change a live annex's budget. Refused (422, naming the figures) when it is above the
        administrator's maximum or below what the annex has already cost."""
        if budget > self.settings.max_annex_budget:
            raise PolicyViolation(
                f"a budget may be at most ${usd(self.settings.max_annex_budget)} here", field="budget"
            )
        instances = self.store.list_instances(annex.id)
        cost = self.cost(annex, instances, now)
        if budget <= cost.accrued:
            raise PolicyViolation(
                f"annex {annex.name} has already cost ${usd(cost.accrued)}; a budget must be more than that",
                field="budget",
            )
        state = self.store.budget_due(annex.id)
        warned = state.warned if state is not None else False
        due = next_budget_look(budget, cost, warned=warned)
        return self.store.set_annex_budget(
            annex,
            budget,
            due_at=due,
            expires=max(annex.lease_expires_at, now) + retention,
            actor=actor,
            now=now,
        )

    # --- administrators -------------------------------------------------------------------------

    def set_owner_budget(
        self, *, is_admin: bool, actor: str, owner: str, monthly_usd: Decimal, now: datetime
    ) -> OwnerBudget:
        if not is_admin:
            raise Forbidden("only pool administrators may set budgets")
        self.store.set_owner_budget(owner, monthly_usd, actor=actor, now=now)
        return self.owner_budget(owner)

    def report(self, *, is_admin: bool, month: str | None, now: datetime) -> SpendReport:
        if not is_admin:
            raise Forbidden("only pool administrators may read the spend report")
        month = month or month_of(now)
        try:
            lo, _ = month_bounds(month)
        except (ValueError, OverflowError) as exc:  # year 0000; 9999-12 ends past the calendar
            raise PolicyViolation(f"{month} is not a month such as 2026-12", field="month") from exc
        if lo > now:
            raise PolicyViolation(f"{month} has not started yet", field="month")
        months = self._months(self._owner_annexes(None), month, now, self.book())
        owners = []
        for owner in sorted(months):
            m = months[owner]
            budget = self.owner_budget(owner).monthly_usd
            owners.append(
                OwnerSpend(
                    owner=owner,
                    month=month,
                    annexes=m.annexes,
                    spent_usd=usd(m.spent),
                    committed_usd=usd(m.committed),
                    live_usd_per_hour=m.usd_per_hour,
                    monthly_budget_usd=budget,
                    remaining_usd=remaining(budget, m.committed),
                )
            )
        total = sum((m.spent for m in months.values()), Decimal(0))
        return SpendReport(month=month, at=now, owners=owners, total_spent_usd=usd(total))


def owner_budget(store: AnnexStore, owner: str, *, default: Decimal | None) -> OwnerBudget:
    """The owner's monthly budget: an administrator's, else the template's default (None: no limit)."""
    record = store.owner_budget(owner)
    if record is not None:
        return OwnerBudget(
            owner=owner,
            monthly_usd=record.monthly_usd,
            source=f"set by {record.set_by} at {record.set_at.isoformat()}",
        )
    return OwnerBudget(owner=owner, monthly_usd=default, source="template default")


def admit_new_spend(
    store: AnnexStore,
    owner: str,
    *,
    adds: Decimal | None,
    default_budget: Decimal | None,
    book: PriceBook,
    now: datetime,
    what: str,
    field: str,
) -> None:
    """Admission control for spend that no request carries (a spot replacement): BudgetExceeded, naming
    the figures, when `adds` would take the owner's month past their budget. Reads as a request does."""
    budget = owner_budget(store, owner, default=default_budget).monthly_usd
    if budget is None or adds is None:
        return
    month = OwnerMonths(store).owner_month(owner, now=now, book=book)
    admit(adds=adds, committed=month.committed, budget=budget, month=month.month, what=what, field=field)


def _admitted(quote: Quote, adds: Decimal | None, *, what: str, field: str, enforce: bool) -> Quote:
    """The quote, marked refused when the month's budget would not cover it; raised with `enforce`."""
    try:
        admit(
            adds=adds,
            committed=quote.month_committed_usd,
            budget=quote.monthly_budget_usd,
            month=quote.month,
            what=what,
            field=field,
        )
    except BudgetExceeded as refused:
        if enforce:
            raise
        return quote.model_copy(update={"allowed": False, "refusal": refused.message})
    return quote


WARN_AT = Decimal("0.8")


def next_budget_look(budget: Decimal, cost: AnnexCost, *, warned: bool) -> datetime | None:
    """The earlier of: when 80% of the budget is spent (unless the warning went out), and a check
    before the budget is reached."""
    due = budget_due_at(budget, cost)
    if not warned:
        warn = budget_reached_at(budget * WARN_AT, cost)
        if warn is not None and (due is None or warn < due):
            return warn
    return due
