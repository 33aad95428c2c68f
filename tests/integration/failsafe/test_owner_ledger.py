"""The owner's month ledger against the full recomputation: randomized histories of annexes that span
month boundaries, fail to launch, run spot instances priced per zone or types with no price, end early or
stay live; and an end that is retried or raced adds once."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from annex.core.config import MoneySettings
from annex.core.models import Annex, AnnexState, EndReason, Instance, InstanceState, Market
from annex.money.service import MoneyService, OwnerMonth
from annex.pricing.prices import Price
from annex.store import AnnexStore
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import TABLE
from tests.integration.failsafe.conftest import function_env

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)  # two days into December: histories reach back into November
RETENTION = timedelta(days=90)
TYPES = ("c7i.xlarge", "m7i.large", "x9.unpriced")  # the last has no price: it adds nothing, either way
ZONES = ("us-east-1a", "us-east-1b", None)
EPSILON = Decimal("1e-18")  # sums of the same terms in another order (28-digit Decimal)

_owners = itertools.count()
_instances = itertools.count(0x10000000)


def _price(itype: str, usd: str, market: Market, zones: dict[str, str] | None = None) -> Price:
    z = {k: Decimal(v) for k, v in (zones or {}).items()}
    return Price(
        region="us-east-1",
        instance_type=itype,
        market=market,
        usd_per_hour=max([Decimal(usd), *z.values()]),
        zones=z,
        source="test",
        as_of=NOW,
        fetched_at=NOW,
    )


PRICES = [
    _price("c7i.xlarge", "0.1785", Market.ON_DEMAND),
    _price("m7i.large", "0.1008", Market.ON_DEMAND),
    _price("c7i.xlarge", "0.08", Market.SPOT, {"us-east-1a": "0.0613", "us-east-1b": "0.0702"}),
    _price("m7i.large", "0.04", Market.SPOT, {"us-east-1a": "0.0311"}),
]


@dataclass(frozen=True)
class Run:
    type_: int
    zone: int
    start: float  # fraction of the annex's life before it launched
    end: float | None  # fraction of what is left when it ended on its own (None: ran until the annex ended)


@dataclass(frozen=True)
class Story:
    created_hours_ago: float
    hours: float  # until it ended (or would: past NOW it is still live)
    lease_extra_hours: float  # a lease longer than its life: stopped early
    spot: bool
    failed: bool
    runs: tuple[Run, ...]


runs = st.builds(
    Run,
    type_=st.integers(0, len(TYPES) - 1),
    zone=st.integers(0, len(ZONES) - 1),
    start=st.floats(0, 0.9),
    end=st.none() | st.floats(0, 1),
)
stories = st.builds(
    Story,
    created_hours_ago=st.floats(0.01, 24 * 4),
    hours=st.floats(0.001, 24 * 3),
    lease_extra_hours=st.floats(0, 48),
    spot=st.booleans(),
    failed=st.booleans(),
    runs=st.lists(runs, max_size=3).map(tuple),
)


@pytest.fixture
def money(ddb) -> MoneyService:
    store = AnnexStore(ddb, TABLE)
    store.put_prices(PRICES)
    return MoneyService(store, MoneySettings.from_env(function_env("RequestFunction")))


def live_out(story: Story, owner: str, store: AnnexStore) -> None:
    """Write one annex's history as the API, the launch function and the sweeps would."""
    created = NOW - timedelta(hours=story.created_hours_ago)
    end = created + timedelta(hours=story.hours)
    market = Market.SPOT if story.spot else Market.ON_DEMAND
    runs = () if story.failed else story.runs
    annex = Annex(
        id=store.new_annex_id(),
        name=f"a{next(_instances)}",
        owner=owner,
        state=AnnexState.REQUESTED,
        count=max(1, len(runs)),
        instance_types=list(TYPES),
        market=market,
        lease_expires_at=end + timedelta(hours=story.lease_extra_hours),
        idle_timeout_seconds=600,
        created_at=created,
        updated_at=created,
    )
    store.create_annex(
        annex,
        fingerprint="f",
        max_live_per_owner=10**6,
        max_live_in_stack=10**6,
        actor="t",
        retention=RETENTION,
    )
    horizon = min(end, NOW)
    ended_alone: list[tuple[str, datetime]] = []
    if runs:
        for before, after in (
            (AnnexState.REQUESTED, AnnexState.LAUNCHING),
            (AnnexState.LAUNCHING, AnnexState.RUNNING),
        ):
            assert store.set_state(annex.id, expected=[before], new_state=after, now=created, actor="launch")
        instances = []
        for run in runs:
            launched = created + (horizon - created) * run.start
            instance = Instance(
                instance_id=f"i-{next(_instances):x}",
                annex_id=annex.id,
                instance_type=TYPES[run.type_],
                zone=ZONES[run.zone],
                market=market,
                state=InstanceState.RUNNING,
                launched_at=launched,
            )
            instances.append(instance)
            if run.end is not None:
                ended_alone.append((instance.instance_id, launched + (horizon - launched) * run.end))
        store.put_instances(instances, reap_at=NOW + timedelta(days=1))
    for instance_id, at in ended_alone:  # interrupted or idle-reaped while the annex ran
        store.mark_instances_ended(
            annex.id, [instance_id], reason=EndReason.IDLE, now=at, retention=RETENTION
        )
    if end <= NOW:  # the sweep: the annex ends, then its instances are marked at the same instant
        store.end_annex(
            annex.id,
            reason=EndReason.LAUNCH_FAILED if story.failed else EndReason.STOPPED,
            now=end,
            actor="t",
            retention=RETENTION,
            final_state=AnnexState.FAILED if story.failed else AnnexState.ENDED,
        )
        live = [i.instance_id for i in store.list_instances(annex.id) if i.ended_at is None]
        store.mark_instances_ended(annex.id, live, reason=EndReason.STOPPED, now=end, retention=RETENTION)


def same(ledger: OwnerMonth, full: OwnerMonth) -> None:
    assert ledger.annexes == full.annexes
    assert abs(ledger.spent - full.spent) < EPSILON, (ledger.spent, full.spent)
    assert abs(ledger.committed - full.committed) < EPSILON, (ledger.committed, full.committed)
    assert ledger.usd_per_hour == full.usd_per_hour


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(stories, min_size=1, max_size=3))
# Always tried: a spot annex across the month boundary, ended with one instance still running and one
# ended before it; a failed launch; an on-demand annex stopped early, and one still live.
@example(
    history=[
        Story(40, 20, 3, spot=True, failed=False, runs=(Run(0, 0, 0.1, None), Run(1, 0, 0.0, 0.5))),
        Story(5, 1, 0, spot=False, failed=True, runs=(Run(0, 2, 0.0, None),)),
        Story(10, 2, 6, spot=False, failed=False, runs=(Run(1, 2, 0.2, None), Run(2, 1, 0.0, None))),
        Story(3, 9, 0, spot=True, failed=False, runs=(Run(0, 1, 0.5, None),)),
    ]
)
def test_the_ledger_agrees_with_recomputing_every_annex(money, history):
    # Given an owner's randomized history (each example a new owner in the same table)
    owner = f"arn:aws:iam::123456789012:user/u{next(_owners)}"
    for story in history:
        live_out(story, owner, money.store)
    # When admission reads their month from the ledger, and the report recomputes it from every annex
    book = money.book()
    for at in (NOW, NOW + timedelta(hours=30)):
        ledger = money.owner_month(owner, now=at, book=book)
        full = money.owner_month_in_full(owner, now=at, book=book)
        # Then both say the same
        same(ledger, full)


def _live_annex(money: MoneyService, owner: str) -> str:
    live_out(
        Story(6, 24, 0, spot=True, failed=False, runs=(Run(0, 0, 0.0, None), Run(1, 1, 0.5, None))),
        owner,
        money.store,
    )
    (annex,) = money.store.list_annexes(owner=owner, limit=10, page_token=None)[0]
    return annex.id


def test_an_end_retried_or_raced_adds_once(money, ddb):
    # Given a running annex, and a second process that ends it while the first is ending it too
    owner = f"arn:aws:iam::123456789012:user/u{next(_owners)}"
    annex_id = _live_annex(money, owner)
    first = money.store
    other = AnnexStore(ddb, TABLE)
    stale = first.get_annex_record(annex_id)
    reads = iter([stale])
    real_read = first.get_annex_record

    def racing_read(annex_id: str, *, consistent: bool = True):
        record = next(reads, None)
        if record is None:
            return real_read(annex_id, consistent=consistent)
        other.end_annex(annex_id, reason=EndReason.STOPPED, now=NOW, actor="other", retention=RETENTION)
        return record  # read before the other process ended it

    first.get_annex_record = racing_read  # type: ignore[method-assign]
    # When the first ends it on that stale read, and then retries
    assert (
        first.end_annex(annex_id, reason=EndReason.IDLE, now=NOW, actor="first", retention=RETENTION) is None
    )
    assert (
        first.end_annex(annex_id, reason=EndReason.IDLE, now=NOW, actor="first", retention=RETENTION) is None
    )
    live = [i.instance_id for i in money.store.list_instances(annex_id) if i.ended_at is None]
    money.store.mark_instances_ended(annex_id, live, reason=EndReason.STOPPED, now=NOW, retention=RETENTION)
    # Then its month counts it once, with what it ran once
    book = money.book()
    ledger = money.owner_month(owner, now=NOW, book=book)
    assert ledger.annexes == 1
    same(ledger, money.owner_month_in_full(owner, now=NOW, book=book))
    assert money.store.owner_ledger(owner, "2026-12").open_ids == frozenset()


def test_admission_reads_do_not_grow_with_the_annexes_an_owner_keeps(money, ddb):
    # Given an owner with one live annex, whose month is read once
    owner = f"arn:aws:iam::123456789012:user/u{next(_owners)}"
    _live_annex(money, owner)
    book = money.book()
    calls: list[str] = []
    ddb.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
    money.owner_month(owner, now=NOW, book=book)
    with_one = sorted(calls)
    assert with_one == ["BatchGetItem", "Query", "TransactGetItems"]
    # When they have also kept 8 annexes that ended this month
    for _ in range(8):
        live_out(Story(20, 10, 5, spot=False, failed=False, runs=(Run(0, 2, 0.0, None),)), owner, money.store)
    calls.clear()
    month = money.owner_month(owner, now=NOW, book=book)
    # Then reading their month makes the same calls as before (the ledger, the live annex, its instances)
    assert sorted(calls) == with_one
    assert month.annexes == 9
    same(month, money.owner_month_in_full(owner, now=NOW, book=book))
