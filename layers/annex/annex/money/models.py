"""API shapes for money: cost estimates, budgets and spend reports. Every figure carries the prices it
was made from (source and date)."""

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

from annex.core.clock import parse_time, to_iso
from annex.core.models import (
    Annex,
    AnnexDetail,
    AnnexId,
    CreateAnnexRequest,
    Draining,
    ExtendResult,
    LeaseMove,
)
from annex.money.cost import AnnexCost, usd
from annex.money.units import BudgetIn, Usd
from annex.pricing.prices import Price

Time = Annotated[datetime, BeforeValidator(parse_time), PlainSerializer(to_iso, return_type=str)]
MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"
ESTIMATE_NOTE = (
    "an estimate from list prices (EC2 bills per second, 60 s minimum); the bill itself is in Cost Explorer"
)


class InstanceCostView(BaseModel):
    model_config = ConfigDict(defer_build=True)
    instance_id: str
    usd_per_hour: Usd | None = None
    accrued_usd: Usd


class CostEstimate(BaseModel):
    """What an annex has cost so far and will cost if it runs to the end of its lease."""

    model_config = ConfigDict(defer_build=True)

    at: Time
    accrued_usd: Usd = Field(description="Cost so far (USD, rounded to the cent).")
    usd_per_hour: Usd = Field(description="What it costs per hour now (before launch: the request's bound).")
    forecast_usd: Usd = Field(description="Cost if every live instance runs until the lease ends.")
    upper_bound: bool = Field(description="True before launch: the count at the dearest allowed type.")
    complete: bool = Field(description="False when some instance type has no known price (left out).")
    unpriced_types: list[str] = Field(default_factory=list)
    budget_usd: Usd | None = None
    budget_reached_at: Time | None = Field(
        default=None,
        description="When the budget is reached at the current rate (None: not within the lease).",
    )
    instances: list[InstanceCostView] = Field(default_factory=list)
    prices: list[Price] = Field(default_factory=list, description="The prices used, with source and date.")
    note: str = ESTIMATE_NOTE

    @classmethod
    def of(cls, annex: Annex, cost: AnnexCost, *, budget_reached_at: datetime | None) -> Self:
        return cls(
            at=cost.at,
            accrued_usd=usd(cost.accrued),
            usd_per_hour=cost.usd_per_hour,
            forecast_usd=usd(cost.forecast),
            upper_bound=cost.upper_bound,
            complete=cost.complete,
            unpriced_types=cost.unpriced,
            budget_usd=annex.budget_usd,
            budget_reached_at=budget_reached_at,
            instances=[
                InstanceCostView(
                    instance_id=i.instance_id,
                    usd_per_hour=i.usd_per_hour,
                    accrued_usd=i.accrued.quantize(Decimal("0.0001")),
                )
                for i in cost.instances
            ],
            prices=cost.prices,
        )


class AnnexView(AnnexDetail, Draining):
    """GET /annexes/{id}: the annex, its instances and history, and what it costs."""

    cost: CostEstimate | None = None


class AnnexSummary(Annex, Draining):
    cost: CostEstimate | None = None


class AnnexListView(BaseModel):
    model_config = ConfigDict(defer_build=True)
    annexes: list[AnnexSummary]
    next_token: str | None = Field(default=None, description="Pass as ?next_token= for the next page.")


class Quote(BaseModel):
    """What a request or an extension adds, and the owner's month against their budget."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    adds_usd: Usd | None = Field(description="The most this adds (None: no price known).")
    usd_per_hour: Usd | None = None
    price: Price | None = None
    month: str
    month_spent_usd: Usd
    month_committed_usd: Usd = Field(description="Spent this month plus live annexes to their lease ends.")
    monthly_budget_usd: Usd | None = None
    remaining_usd: Usd | None = None
    allowed: bool = Field(default=True, description="False when the monthly budget would refuse it.")
    refusal: str | None = None
    note: str = ESTIMATE_NOTE


class ExtendView(ExtendResult):
    """POST /annexes/{id}/extend: the extended annex, and what the extension adds."""

    quote: Quote | None = None


class BudgetRequest(BaseModel):
    """Body of POST /annexes/{id}/budget: set or change a live annex's budget (USD)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    budget: BudgetIn


class ExtendEstimate(LeaseMove):
    annex_id: AnnexId


class EstimateRequest(BaseModel):
    """Body of POST /estimates: exactly one of `request` (a POST /annexes body) or `extend`."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    request: CreateAnnexRequest | None = None
    extend: ExtendEstimate | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.request is None) == (self.extend is None):
            raise ValueError(
                "give exactly one of 'request' (a new annex) or 'extend' (an annex id and by/until)"
            )
        return self


class NotificationRequest(BaseModel):
    """Body of POST /notifications: e-mail me the notices of my annexes."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, defer_build=True)

    email: str = Field(
        pattern=r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$",
        max_length=254,
        description="Where to send the notices; AWS sends a confirmation e-mail first.",
    )


class NotificationSubscription(BaseModel):
    model_config = ConfigDict(defer_build=True)
    email: str
    owner: str = Field(description="Only notices about this owner's annexes reach the address.")
    subscription: str = Field(description="The SNS subscription ARN, or 'pending confirmation'.")
    message: str


class OwnerBudgetRequest(BaseModel):
    """Body of PUT /admin/budgets: an owner's monthly budget (administrators only)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, defer_build=True)

    owner: str = Field(
        pattern=r"^(arn:aws[a-z-]*:(iam|sts)::\d{12}:[A-Za-z0-9+=,.@_/-]+|identity-center:\d{12}:[A-Za-z0-9+=,.@_-]+)$",
        max_length=512,
        description="The owner as annexes show it (an IAM ARN, or identity-center:<account>:<user>).",
    )
    monthly_usd: BudgetIn


class OwnerBudget(BaseModel):
    model_config = ConfigDict(defer_build=True)
    owner: str
    monthly_usd: Usd | None = Field(description="None: no monthly budget for this owner.")
    source: str = Field(description="'set by <admin> at <time>', or 'template default'.")


class OwnerSpend(BaseModel):
    model_config = ConfigDict(defer_build=True)
    owner: str
    month: str
    annexes: int
    spent_usd: Usd = Field(description="Accrued within the month so far.")
    committed_usd: Usd = Field(description="Spent, plus live annexes to their lease ends.")
    live_usd_per_hour: Usd
    monthly_budget_usd: Usd | None = None
    remaining_usd: Usd | None = None


class SpendReport(BaseModel):
    model_config = ConfigDict(defer_build=True)
    month: str
    at: Time
    owners: list[OwnerSpend]
    total_spent_usd: Usd
    note: str = ESTIMATE_NOTE


def remaining(budget: Decimal | None, committed: Decimal) -> Decimal | None:
    return None if budget is None else max(Decimal(0), usd(budget - committed))
