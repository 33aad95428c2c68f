"""The money check, every minute with the lease-check: budgets that are due, and lease-ending notices.

1. Budgets come from the sparse `due` index (`due_kind` = "budget"): only budgeted live annexes carry
   it, at the earlier of "80% spent" and "a check before the budget is reached", so the cost of a run
   grows with what is due. Each is costed from its instance records at the current prices; an annex
   whose budget is reached (or would be before the next check) ends with reason budget-reached through
   the one termination path (`end_annexes`); otherwise it is rescheduled, with the 80% notice sent once.
2. Lease-ending notices: annexes whose lease ends within NOTICE_BEFORE_LEASE_END (the same index, read
   ahead) get one notice per lease expiry; an extension earns a new one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from annex.aws.inventory import Ec2Inventory
from annex.core.clock import to_epoch
from annex.core.config import MoneySettings
from annex.core.models import EndReason
from annex.failsafe.termination import Termination, end_annexes
from annex.money.budgets import over_budget
from annex.money.cost import annex_cost, budget_reached_at, usd
from annex.money.notices import Notifier, budget_warning, ended, lease_ending
from annex.money.service import WARN_AT, MoneyService
from annex.pricing.prices import PriceBook
from annex.store import AnnexStore

log = logging.getLogger(__name__)
ACTOR = "budget-check"
FOREVER = timedelta(days=3650)
LEASE_ENDING = "lease-ending"
ENDED = "ended"


@dataclass
class MoneyCheck:
    budgets_due: int = 0
    rescheduled: int = 0
    notices: int = 0
    live_instances: int | None = None  # the fleet, for the administrators' alarms
    usd_per_hour: Decimal | None = None
    termination: Termination = field(default_factory=Termination)
    failures: dict[str, Exception] = field(default_factory=dict)


def run_money_check(
    store: AnnexStore,
    ec2: Ec2Inventory,
    notifier: Notifier,
    settings: MoneySettings,
    *,
    now: datetime,
    retention: timedelta,
) -> MoneyCheck:
    out = MoneyCheck()
    money = MoneyService(store, settings)
    book = money.book()  # one read of the prices per run
    try:
        due = list(store.due_budgets(now=now))
    except Exception as exc:
        log.exception("could not read the due budgets")
        out.failures["due budgets"] = exc
        due = []
    out.budgets_due = len(due)
    for annex_id in due:
        try:
            _check_budget(
                store, ec2, notifier, money, annex_id, book=book, now=now, retention=retention, out=out
            )
        except Exception as exc:  # one bad record must not keep the others running
            log.exception("could not check the budget of %s", annex_id)
            out.failures[annex_id] = exc
    try:
        ending = list(store.due_leases(now=now + settings.notice_lead))
    except Exception as exc:
        log.exception("could not read the leases ending soon")
        out.failures["leases ending"] = exc
        ending = []
    for annex_id in ending:
        try:
            _notice_lease_ending(store, notifier, money, annex_id, now=now, retention=retention, out=out)
        except Exception as exc:
            log.exception("could not send the lease-ending notice of %s", annex_id)
            out.failures[f"notice {annex_id}"] = exc
    try:
        out.live_instances, out.usd_per_hour = fleet_rate(store, book, now=now)
    except Exception as exc:
        log.exception("could not total the live fleet")
        out.failures["fleet figures"] = exc
    return out


def fleet_rate(store: AnnexStore, book: PriceBook, *, now: datetime) -> tuple[int, Decimal]:
    """Live instances and what they cost per hour, over every live annex (read from the `due` index,
    which holds exactly the live annexes, then batched reads): O(live annexes), for the alarms. An
    annex's units held are its live instances (its count before launch finished), each at the dearest
    of its types."""
    ids = list(store.due_leases(now=now + FOREVER))
    instances, rate = 0, Decimal(0)
    for record in store.get_annexes(ids).values():
        if not record.annex.live:
            continue
        instances += record.held
        price = book.dearest(record.annex.instance_types, record.annex.market)
        if price is not None:
            rate += price.usd_per_hour * record.held
    return instances, rate


def _check_budget(
    store: AnnexStore,
    ec2: Ec2Inventory,
    notifier: Notifier,
    money: MoneyService,
    annex_id: str,
    *,
    book: PriceBook,
    now: datetime,
    retention: timedelta,
    out: MoneyCheck,
) -> None:
    record = store.get_annex_record(annex_id)
    if record is None or not record.annex.live or record.annex.budget_usd is None:
        store.schedule_budget(annex_id, None, expires=now + retention)  # nothing left to watch
        return
    annex, budget = record.annex, record.annex.budget_usd
    instances = store.list_instances(annex_id)
    cost = annex_cost(annex, instances, book, now=now)
    if over_budget(budget, cost):
        ended = end_annexes(
            store,
            ec2,
            [annex_id],
            reason=EndReason.BUDGET_REACHED,
            actor=ACTOR,
            now=now,
            retention=retention,
            detail=f"its cost ${usd(cost.accrued)} reached its budget ${usd(budget)} "
            f"(or would before the next check, at ${cost.usd_per_hour.normalize():f}/h)",
        )
        out.termination.annexes_ended += ended.annexes_ended
        for reason, ids in ended.terminated.items():
            out.termination.add_terminated(reason, ids)
        out.termination.failures.update(ended.failures)
        if not ended.failures:
            store.schedule_budget(annex_id, None, expires=now + retention)
        return
    state = store.budget_due(annex_id)
    warned = state.warned if state is not None else False
    if not warned and cost.accrued >= budget * WARN_AT:
        notifier.publish([budget_warning(annex, cost, reached_at=budget_reached_at(budget, cost))])
        out.notices += 1
        warned = True
    money.schedule_budget(annex, instances, now=now, retention=retention, book=book, warned=warned)
    out.rescheduled += 1


def _notice_lead_ok(expires: datetime, now: datetime) -> bool:
    return expires > now


def _notice_lease_ending(
    store: AnnexStore,
    notifier: Notifier,
    money: MoneyService,
    annex_id: str,
    *,
    now: datetime,
    retention: timedelta,
    out: MoneyCheck,
) -> None:
    record = store.get_annex_record(annex_id)
    if record is None or not record.annex.live or not _notice_lead_ok(record.annex.lease_expires_at, now):
        return  # ended, or the lease-check ends it now
    annex = record.annex
    occasion = str(to_epoch(annex.lease_expires_at))
    if store.notice_sent(annex_id, LEASE_ENDING, occasion):
        return
    cost = money.cost(annex, store.list_instances(annex_id), now)
    # Send, then record: a crash between the two sends it again (at least once), never not at all.
    notifier.publish([lease_ending(annex, cost, now=now)])
    store.record_notice(annex_id, LEASE_ENDING, occasion, now=now, retention=retention)
    out.notices += 1


def notify_ended(
    store: AnnexStore,
    notifier: Notifier,
    settings: MoneySettings,
    annex_id: str,
    *,
    now: datetime,
    retention: timedelta,
) -> bool:
    """The "annex ended" notice, once per annex (a repeated stream delivery sends nothing new). The cost
    is what it had accrued when it ended. Returns whether a notice was sent."""
    if store.notice_sent(annex_id, ENDED, "final"):
        return False
    record = store.get_annex_record(annex_id)
    if record is None or record.annex.live:
        return False
    annex = record.annex
    cost = MoneyService(store, settings).cost(annex, store.list_instances(annex_id), annex.ended_at or now)
    notifier.publish([ended(annex, cost)])
    store.record_notice(annex_id, ENDED, "final", now=now, retention=retention)
    return True
