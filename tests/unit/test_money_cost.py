"""Accrued cost, forecasts and budget due times: pure functions with a moved clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from annex.core.models import Annex, AnnexState, Instance, InstanceState, Market
from annex.money.budgets import (
    BudgetExceeded,
    admit,
    annex_month_spend,
    budget_due_at,
    month_bounds,
    over_budget,
)
from annex.money.cost import annex_cost, billed_seconds, budget_reached_at, extension_cost, request_cost
from annex.pricing.prices import Price, PriceBook

T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def price(
    itype: str, usd: str, market: Market = Market.ON_DEMAND, zones: dict[str, str] | None = None
) -> Price:
    z = {k: Decimal(v) for k, v in (zones or {}).items()}
    return Price(
        region="us-east-1",
        instance_type=itype,
        market=market,
        usd_per_hour=max([Decimal(usd), *z.values()]),
        zones=z,
        source="test",
        as_of=T0,
        fetched_at=T0,
    )


BOOK = PriceBook("us-east-1", {("c7i.xlarge", Market.ON_DEMAND): price("c7i.xlarge", "0.36")})


def annex(
    state: AnnexState = AnnexState.RUNNING,
    *,
    count: int = 2,
    lease: timedelta = timedelta(hours=4),
    market: Market = Market.ON_DEMAND,
    types: tuple[str, ...] = ("c7i.xlarge",),
    budget: str | None = None,
) -> Annex:
    return Annex(
        id="ax-0123456789abcdef",
        name="a",
        owner="arn:aws:iam::123456789012:user/alice",
        state=state,
        count=count,
        instance_types=list(types),
        market=market,
        lease_expires_at=T0 + lease,
        idle_timeout_seconds=600,
        created_at=T0,
        updated_at=T0,
        budget_usd=budget,
    )


def inst(
    n: int,
    *,
    launched: datetime = T0,
    ended: datetime | None = None,
    zone: str | None = None,
    market: Market = Market.ON_DEMAND,
) -> Instance:
    return Instance(
        instance_id=f"i-{n:017x}",
        annex_id="ax-0123456789abcdef",
        instance_type="c7i.xlarge",
        zone=zone,
        market=market,
        state=InstanceState.TERMINATED if ended else InstanceState.RUNNING,
        launched_at=launched,
        ended_at=ended,
    )


def test_ec2_bills_at_least_sixty_seconds_then_per_second():
    assert billed_seconds(T0, T0 + timedelta(seconds=5)) == 60
    assert billed_seconds(T0, T0 + timedelta(seconds=61)) == 61


def test_accrued_cost_counts_each_instance_from_launch_with_the_minimum():
    # Given two instances at $0.36/h, one ended after 10 s (billed 60 s), one running for 30 min
    instances = [inst(1, ended=T0 + timedelta(seconds=10)), inst(2)]
    # When costed 30 minutes in
    cost = annex_cost(annex(), instances, BOOK, now=T0 + timedelta(minutes=30))
    # Then 60 s + 1800 s at $0.0001/s, and only the running one costs per hour now
    assert cost.accrued == Decimal("0.006") + Decimal("0.18")
    assert cost.usd_per_hour == Decimal("0.36")
    # and the forecast runs the live one to the lease end (4 h from launch)
    assert cost.forecast == Decimal("0.006") + Decimal("1.44")


def test_before_launch_the_forecast_is_the_whole_request_and_says_it_is_a_bound():
    cost = annex_cost(annex(AnnexState.REQUESTED, count=3), [], BOOK, now=T0)
    assert cost.upper_bound
    assert cost.usd_per_hour == Decimal("1.08")
    assert cost.forecast == Decimal("4.32")


def test_an_unknown_type_is_named_not_silently_free():
    cost = annex_cost(annex(AnnexState.REQUESTED, types=("x9.huge",)), [], BOOK, now=T0)
    assert not cost.complete
    assert cost.unpriced == ["x9.huge"]


def test_spot_instances_cost_their_own_zone_and_the_book_bounds_unknown_zones():
    spot = price("c7i.xlarge", "0.05", Market.SPOT, zones={"us-east-1a": "0.05", "us-east-1b": "0.09"})
    book = PriceBook("us-east-1", {("c7i.xlarge", Market.SPOT): spot})
    a = annex(market=Market.SPOT)
    cost = annex_cost(
        a,
        [inst(1, zone="us-east-1a", market=Market.SPOT), inst(2, market=Market.SPOT)],
        book,
        now=T0 + timedelta(hours=1),
    )
    assert cost.usd_per_hour == Decimal("0.14")  # 0.05 (its zone) + 0.09 (zone unknown: the dearest)


def test_spot_without_a_spot_price_is_bounded_by_on_demand_and_says_so():
    p = BOOK.get("c7i.xlarge", Market.SPOT)
    assert p is not None
    assert p.usd_per_hour == Decimal("0.36")
    assert "on-demand price bounds it" in p.source_detail


def test_request_and_extension_cost():
    adds, p = request_cost(2, ["c7i.xlarge"], Market.ON_DEMAND, timedelta(hours=2), BOOK)
    assert adds == Decimal("1.44")
    assert p is not None
    cost = annex_cost(annex(), [inst(1), inst(2)], BOOK, now=T0 + timedelta(hours=1))
    assert extension_cost(cost, timedelta(days=1)) == Decimal("17.28")


def test_the_budget_is_due_a_check_before_it_is_reached():
    # $0.72/h from T0, budget $1.44: reached at T0+2h, due one minute before
    cost = annex_cost(annex(), [inst(1), inst(2)], BOOK, now=T0 + timedelta(minutes=10))
    assert budget_reached_at(Decimal("1.44"), cost) == T0 + timedelta(hours=2)
    assert budget_due_at(Decimal("1.44"), cost) == T0 + timedelta(hours=2) - timedelta(minutes=1)
    assert not over_budget(Decimal("1.44"), cost)
    late = annex_cost(annex(), [inst(1), inst(2)], BOOK, now=T0 + timedelta(hours=2) - timedelta(seconds=30))
    assert over_budget(Decimal("1.44"), late)


def test_a_spot_price_rise_moves_the_budget_due_time_earlier():
    def book(usd: str) -> PriceBook:
        return PriceBook(
            "us-east-1",
            {("c7i.xlarge", Market.SPOT): price("c7i.xlarge", usd, Market.SPOT, zones={"us-east-1a": usd})},
        )

    a = annex(market=Market.SPOT)
    instances = [inst(1, zone="us-east-1a", market=Market.SPOT)]
    now = T0 + timedelta(minutes=30)
    before = budget_due_at(Decimal("1"), annex_cost(a, instances, book("0.10"), now=now))
    after = budget_due_at(Decimal("1"), annex_cost(a, instances, book("0.20"), now=now))
    assert before is not None
    assert after is not None
    assert after < before


def test_month_spend_clips_runs_to_the_month():
    a = annex(lease=timedelta(days=3))
    start = datetime(2026, 11, 30, 12, tzinfo=UTC)
    a = a.model_copy(update={"created_at": start, "lease_expires_at": start + timedelta(days=3)})
    i = inst(1, launched=start)
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    dec = annex_month_spend(a, [i], BOOK, month="2026-12", now=now)
    nov = annex_month_spend(a, [i], BOOK, month="2026-11", now=now)
    assert dec.spent == Decimal("4.32")  # 12 h of December
    assert nov.spent == Decimal("4.32")  # 12 h of November
    assert dec.committed == Decimal("0.36") * 60  # to the lease end, 2 Dec 12:00 + ... = 60 h in December
    assert month_bounds("2026-12") == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def test_admission_refuses_with_the_figures_and_admits_within_budget():
    with pytest.raises(BudgetExceeded) as refused:
        admit(
            adds=Decimal("30"),
            committed=Decimal("80"),
            budget=Decimal("100"),
            month="2026-12",
            what="this request",
            field="count",
        )
    assert "$30.00" in refused.value.message
    assert "$20.00" in refused.value.message
    assert "$100.00" in refused.value.message
    assert refused.value.field == "count"
    admit(
        adds=Decimal("20"),
        committed=Decimal("80"),
        budget=Decimal("100"),
        month="2026-12",
        what="this request",
        field="count",
    )
