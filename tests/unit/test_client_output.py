"""Human output: aligned tables, instance activity, lease left, and the cost summary before a request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from annex_client import render
from annex_client.pricing import estimate, month_text

from tests.unit.client_fakes import ALICE, annex

NOW = datetime(2026, 11, 22, 14, 48, 0, tzinfo=UTC)


def test_table_columns_line_up_without_trailing_spaces():
    out = render.table(["NAME", "STATE"], [["bio-run-7", "running"], ["x", "ended"]])
    lines = out.splitlines()
    assert lines == ["NAME       STATE", "bio-run-7  running", "x          ended"]
    assert all(line == line.rstrip() for line in lines)


@pytest.mark.parametrize(
    ("arn", "short"),
    [
        (ALICE, "alice"),
        ("arn:aws:iam::123456789012:user/division/bob", "bob"),
        ("arn:aws:sts::123456789012:assumed-role/PoolAdmin/carol", "PoolAdmin/carol"),
        ("lease-check", "lease-check"),
    ],
)
def test_owners_and_actors_are_shown_by_short_name(arn, short):
    assert render.who(arn) == short


def test_list_shows_instances_lease_left_and_why_an_annex_ended():
    rows = [
        annex("bio", state="running", launched_count=2),
        annex("old", "ax-00000000000000aa", state="ended", end_reason="lease-expired"),
    ]
    out = render.annex_table(rows, NOW, UTC, owners=True).splitlines()
    assert out[0].split() == [
        "NAME",
        "OWNER",
        "ID",
        "STATE",
        "INSTANCES",
        "TYPE",
        "MARKET",
        "LEASE",
        "LEFT",
        "COST",
        "CREATED",
    ]
    assert out[1].split()[:8] == [
        "bio",
        "alice",
        "ax-0123456789abcdef",
        "running",
        "2/3",
        "c7i.xlarge",
        "on-demand",
        "3h12m",
    ]
    assert "ended (lease-expired)" in out[2]
    assert out[1].index("ax-") == out[2].index("ax-")  # aligned


def test_an_expired_but_live_lease_says_expired():
    assert (
        render.lease_left(annex(state="running", lease_expires_at="2026-11-22T14:00:00Z"), NOW) == "expired"
    )


def test_status_shows_each_instance_busy_or_idle_its_heartbeat_and_the_lease_left():
    detail = annex(
        state="running",
        launched_count=3,
        instances=[
            {
                "instance_id": "i-0aaaaaaaaaaaaaaa1",
                "instance_type": "c7i.xlarge",
                "zone": "us-east-1a",
                "market": "on-demand",
                "state": "running",
                "last_heartbeat_at": "2026-11-22T14:47:48Z",
                "claimed_slots": 3,
                "total_slots": 4,
                "idle_since": None,
            },
            {
                "instance_id": "i-0aaaaaaaaaaaaaaa2",
                "instance_type": "c7i.xlarge",
                "zone": "us-east-1b",
                "market": "on-demand",
                "state": "running",
                "last_heartbeat_at": "2026-11-22T14:47:20Z",
                "claimed_slots": 0,
                "total_slots": 4,
                "idle_since": "2026-11-22T14:43:00Z",
            },
            {
                "instance_id": "i-0aaaaaaaaaaaaaaa3",
                "instance_type": "c7i.xlarge",
                "zone": None,
                "market": "on-demand",
                "state": "pending",
                "last_heartbeat_at": None,
            },
            {
                "instance_id": "i-0aaaaaaaaaaaaaaa4",
                "instance_type": "c7i.xlarge",
                "zone": "us-east-1a",
                "market": "on-demand",
                "state": "terminated",
                "end_reason": "idle",
            },
        ],
        history=[
            {"at": "2026-11-22T14:05:00Z", "actor": "launch", "action": "running", "detail": "3 launched"},
            {"at": "2026-11-22T14:00:00Z", "actor": ALICE, "action": "requested", "detail": ""},
        ],
    )
    out = render.status_text(detail, NOW, UTC)
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("i-")}
    assert "busy 3/4" in lines["i-0aaaaaaaaaaaaaaa1"]
    assert "12s ago" in lines["i-0aaaaaaaaaaaaaaa1"]
    assert lines["i-0aaaaaaaaaaaaaaa1"].rstrip().endswith("3h12m")
    assert "idle 0/4 for 5m" in lines["i-0aaaaaaaaaaaaaaa2"]
    assert "no heartbeat yet" in lines["i-0aaaaaaaaaaaaaaa3"]
    assert "never" in lines["i-0aaaaaaaaaaaaaaa3"]
    assert "ended (idle)" in lines["i-0aaaaaaaaaaaaaaa4"]
    assert "running: 3 of 3 instances launched" in out
    assert "until 2026-11-22 18:00:00 UTC (in 3h12m)" in out
    history = [line for line in out.splitlines() if line.startswith("2026-")]
    assert "requested" in history[0]  # oldest first
    assert "alice" in history[0]


PRICE = {
    "region": "us-east-1",
    "instance_type": "c7i.xlarge",
    "market": "on-demand",
    "usd_per_hour": "0.1785",
    "zones": {},
    "source": "aws-price-list",
    "source_detail": "pricing:GetProducts AmazonEC2 sku X",
    "as_of": "2026-11-01T00:00:00Z",
    "fetched_at": "2026-12-03T06:00:00Z",
}


def quote(**overrides):
    return {
        "adds_usd": "7.14",
        "usd_per_hour": "1.785",
        "price": PRICE,
        "month": "2026-12",
        "month_spent_usd": "10",
        "month_committed_usd": "12.5",
        "monthly_budget_usd": "100",
        "remaining_usd": "87.5",
        "allowed": True,
        **overrides,
    }


def test_the_cost_shown_is_the_apis_with_its_source_and_date():
    est = estimate(quote(), 10, 4, spot=False)
    assert est.instance_hours == 40
    text = est.text()
    assert text.startswith("about $7.14 = 10 x 4h x $0.1785/h")
    assert "AWS Price List API, as of 2026-11-01" in text


def test_spot_or_several_types_are_an_upper_bound_and_a_bounding_on_demand_price_says_so():
    spot = {
        **PRICE,
        "market": "spot",
        "source": "snapshot",
        "source_detail": "no spot price known: the on-demand price bounds it (snapshot.json)",
    }
    text = estimate(quote(price=spot, adds_usd="1.07"), 2, 1.5, spot=True, several=True).text()
    assert text.startswith("at most $1.07")
    assert "the on-demand price bounds it" in text


def test_a_budget_below_the_lease_cost_makes_the_figure_a_bound():
    assert estimate(quote(adds_usd="5"), 10, 4, spot=False).text().startswith("at most $5.00")


def test_no_price_from_the_api_says_price_unknown():
    est = estimate(quote(price=None, adds_usd=None), 3, 4, spot=False)
    assert est.usd is None
    assert est.text().startswith("price unknown")


def test_the_month_line_shows_committed_budget_and_what_is_left():
    assert month_text(quote()) == "$12.50 of your $100.00 budget for 2026-12 spent or committed; $87.50 left"
    assert month_text(quote(monthly_budget_usd=None)) is None


def test_state_line_explains_a_partial_launch_but_not_a_complete_one():
    from annex_client.render import state_line

    full = {"state": "running", "count": 3, "launched_count": 3, "launch_note": "3 of 3 launched"}
    partial = {
        "state": "running",
        "count": 10,
        "launched_count": 7,
        "launch_note": "7 of 10 launched: InsufficientInstanceCapacity for c7i.xlarge in us-east-1a",
    }
    failed = {
        "state": "failed",
        "count": 2,
        "launched_count": 0,
        "end_reason": "launch-failed",
        "launch_note": "0 of 2 launched: no capacity",
    }
    assert state_line(full) == "running: 3 of 3 instances launched"
    assert state_line(partial).endswith("InsufficientInstanceCapacity for c7i.xlarge in us-east-1a")
    assert state_line(failed) == "failed (launch-failed); 0 of 2 launched: no capacity"


def test_check_setup_calls_a_sweep_stale_once_the_alarm_would_fire():
    from datetime import UTC, datetime, timedelta

    from annex_client.commands import sweep_checks

    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

    def at(minutes_ago):
        return (now - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")

    checks = sweep_checks(
        [
            {"name": "lease-check", "last_success_at": at(1)},
            {"name": "idle-reap", "last_success_at": at(6)},
            {"name": "other", "last_success_at": None},
        ],
        now,
    )
    problems = {name: problem for name, _, problem in checks}
    assert problems["lease-check"] is None
    assert problems["idle-reap"] == "idle-reap last succeeded 6m ago"
    assert problems["other"] == "other never ran"


def test_status_says_a_live_annex_is_draining_only_inside_the_drain_window():
    lease = datetime(2026, 11, 22, 14, 48, 15, tzinfo=UTC)
    detail = annex(
        state="running",
        launched_count=3,
        lease_expires_at="2026-11-22T14:48:15Z",
        drains_at="2026-11-22T14:47:45Z",
    )
    inside = render.status_text(detail, NOW, UTC)
    assert "draining: lease ends in 15s, no new jobs start" in inside
    before = render.status_text(detail, lease - timedelta(seconds=31), UTC)
    assert "draining" not in before
    at_start = render.status_text(detail, lease - timedelta(seconds=30), UTC)
    assert "draining: lease ends in 30s, no new jobs start" in at_start
    ended = annex(
        state="ended",
        end_reason="lease-expired",
        lease_expires_at="2026-11-22T14:48:15Z",
        drains_at="2026-11-22T14:47:45Z",
        ended_at="2026-11-22T14:48:15Z",
    )
    assert "draining" not in render.status_text(ended, NOW, UTC)
