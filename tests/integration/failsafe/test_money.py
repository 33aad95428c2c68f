"""Money with a moved clock: budgets that end annexes, admission control against the monthly budget,
extensions that show their cost, spot prices that move the due time, and notices on the bus."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from annex.core.clock import parse_time, to_iso
from annex.core.models import AnnexState, Instance, InstanceState, Market
from annex.pricing.prices import Price
from annex.pricing.refresh import refresh_prices
from annex.store import AnnexStore
from botocore.stub import Stubber

from tests.integration.conftest import ADMIN, ALICE, BOB, STACK, TABLE, run_tagged_instances, table_items
from tests.integration.failsafe.conftest import load_event

BUS = f"{STACK}-events"
SNAPSHOT_C7I = Decimal("0.1785")  # the shipped snapshot's c7i.xlarge on-demand price


@pytest.fixture
def bus(aws) -> Any:
    """The stack's event bus, with a rule to a queue standing in for the notice topic's subscribers."""
    events = boto3.client("events", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    events.create_event_bus(Name=BUS)
    url = sqs.create_queue(QueueName="notices")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="notices", EventBusName=BUS, EventPattern=json.dumps({"source": ["annex"]}))
    events.put_targets(Rule="notices", EventBusName=BUS, Targets=[{"Id": "q", "Arn": arn}])

    def received() -> list[dict[str, Any]]:
        out = []
        while True:
            msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not msgs:
                return out
            for m in msgs:
                out.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    return received


def launched(
    fleet, annex_id: str, n: int, *, at: datetime, market: Market = Market.ON_DEMAND, zone: str = "us-east-1a"
) -> list[str]:
    """What the launch function does: the annex running, `n` tagged instances recorded."""
    store: AnnexStore = fleet.store
    assert store.set_state(
        annex_id, expected=[AnnexState.REQUESTED], new_state=AnnexState.LAUNCHING, now=at, actor="launch"
    )
    assert store.set_state(
        annex_id, expected=[AnnexState.LAUNCHING], new_state=AnnexState.RUNNING, now=at, actor="launch"
    )
    annex = store.get_annex(annex_id)
    ids = run_tagged_instances(fleet.ec2_client, annex_id, n, lease=to_iso(annex.lease_expires_at))
    store.put_instances(
        [
            Instance(
                instance_id=i,
                annex_id=annex_id,
                instance_type="c7i.xlarge",
                zone=zone,
                market=market,
                state=InstanceState.RUNNING,
                launched_at=at,
            )
            for i in ids
        ],
        reap_at=at + timedelta(days=1),
    )
    return ids


def request(api, body: dict[str, Any], *, as_: str = ALICE) -> tuple[int, Any]:
    return api.call("POST", "/annexes", as_=as_, body={"lease": "4h", "idle_timeout": "1h", **body})


def check(lease_check_fn, at: datetime) -> dict[str, Any]:
    return lease_check_fn(load_event("lease-check-schedule"), at=at)


# --- per-annex budgets ------------------------------------------------------------------------------


def test_an_annex_whose_budget_runs_out_ends_budget_reached_within_one_check(api, fleet, lease_check_fn, bus):
    # Given alice's annex of 2 x c7i.xlarge with a $0.50 budget, launched at t0 (2 x $0.1785/h)
    status, annex = request(api, {"name": "capped", "count": 2, "budget": "0.50"})
    assert status == 201
    assert annex["budget_usd"] == "0.5"
    ids = launched(fleet, annex["id"], 2, at=fleet.t0)
    _, view = api.call("GET", f"/annexes/{annex['id']}")
    reached = parse_time(view["cost"]["budget_reached_at"])
    at_rate = fleet.t0 + timedelta(hours=float(Decimal("0.50") / (2 * SNAPSHOT_C7I)))
    # the first minute of each instance is billed at once (60 s minimum), so it is reached a little earlier
    assert at_rate - timedelta(seconds=61) <= reached <= at_rate

    # When the checks run two minutes before it is reached: nothing happens
    check(lease_check_fn, at_rate - timedelta(minutes=2))
    assert fleet.store.get_annex(annex["id"]).state is AnnexState.RUNNING
    assert fleet.running(ids) == set(ids)

    # and the next check (the budget would be passed before the one after) ends it
    summary = check(lease_check_fn, at_rate - timedelta(seconds=50))

    ended = fleet.store.get_annex(annex["id"])
    assert ended.state is AnnexState.ENDED
    assert ended.end_reason is not None
    assert ended.end_reason.value == "budget-reached"
    assert fleet.running(ids) == set()
    assert summary["terminated"] == {"budget-reached": 2}
    _, final = api.call("GET", f"/annexes/{annex['id']}")
    assert Decimal(final["cost"]["accrued_usd"]) <= Decimal("0.50")
    assert any(e["action"] == "ended" and "budget $0.50" in e["detail"] for e in final["history"])
    # and the owner is told it ended? (the 80% warning went out on the way)
    kinds = [e["detail-type"] for e in bus()]
    assert "Annex Budget Warning" in kinds


def test_the_80_percent_warning_goes_out_once_and_names_the_cost_and_the_command(
    api, fleet, lease_check_fn, bus
):
    status, annex = request(api, {"name": "warned", "count": 1, "budget": "1"})
    assert status == 201
    launched(fleet, annex["id"], 1, at=fleet.t0)
    # 80% of $1 at $0.1785/h is spent after about 4.48 h; the lease is 4 h, so extend first
    assert api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "4h"})[0] == 200
    warn_at = fleet.t0 + timedelta(hours=float(Decimal("0.8") / SNAPSHOT_C7I))
    check(lease_check_fn, warn_at - timedelta(minutes=5))
    assert bus() == []
    check(lease_check_fn, warn_at + timedelta(seconds=5))
    check(lease_check_fn, warn_at + timedelta(seconds=65))
    [notice] = bus()
    assert notice["detail-type"] == "Annex Budget Warning"
    detail = notice["detail"]
    assert detail["owner"] == ALICE
    assert detail["name"] == "warned"
    assert Decimal(detail["accrued_usd"]) >= Decimal("0.80")
    assert detail["command"] == "annex-client extend warned --by 1h"


def test_a_spot_price_rise_moves_the_budget_due_time(api, fleet, lease_check_fn):
    # Given a spot annex with a budget, costed at $0.05/h in its zone
    store: AnnexStore = fleet.store
    price = Price(
        region="us-east-1",
        instance_type="c7i.xlarge",
        market=Market.SPOT,
        usd_per_hour=Decimal("0.05"),
        zones={"us-east-1a": Decimal("0.05")},
        source="ec2-spot-price-history",
        as_of=fleet.t0,
        fetched_at=fleet.t0,
    )
    store.put_prices([price])
    status, annex = request(
        api, {"name": "spotty", "count": 1, "market": "spot", "instance_type": "c7i.xlarge", "budget": "1"}
    )
    assert status == 201
    launched(fleet, annex["id"], 1, at=fleet.t0, market=Market.SPOT)
    check(lease_check_fn, fleet.t0)  # the first look reschedules it from the instance records
    before = store.budget_due(annex["id"])
    assert before is not None
    assert before.due_at is not None

    # When the prices function reads a doubled spot price in that zone
    pricing = boto3.client("pricing", region_name="us-east-1")
    ec2 = boto3.client("ec2", region_name="us-east-1")
    with Stubber(pricing) as p_stub, Stubber(ec2) as e_stub:
        p_stub.add_response("get_products", {"PriceList": [], "FormatVersion": "aws_v1"})
        e_stub.add_response(
            "describe_spot_price_history",
            {
                "SpotPriceHistory": [
                    {
                        "AvailabilityZone": "us-east-1a",
                        "InstanceType": "c7i.xlarge",
                        "ProductDescription": "Linux/UNIX",
                        "SpotPrice": "0.10",
                        "Timestamp": fleet.t0 + timedelta(minutes=10),
                    }
                ]
            },
        )
        out = refresh_prices(
            store,
            pricing,
            ec2,
            region="us-east-1",
            instance_types=["c7i.xlarge"],
            now=fleet.t0 + timedelta(minutes=10),
            retention=timedelta(days=30),
        )
    assert out.spot == 1
    assert out.budgets_rescheduled == 1

    # Then the due time moved earlier, and GET shows the budget reached sooner at the new price
    after = store.budget_due(annex["id"])
    assert after is not None
    assert after.due_at is not None
    assert after.due_at < before.due_at
    _, view = api.call("GET", f"/annexes/{annex['id']}")
    assert Decimal(view["cost"]["usd_per_hour"]) == Decimal("0.10")
    assert [p["source"] for p in view["cost"]["prices"]] == ["ec2-spot-price-history"]


def test_bad_budgets_are_refused_naming_the_field_and_change_nothing(api, ddb):
    before = table_items(ddb)
    bad_budgets = [
        "-1",
        "0",
        0,
        -5,
        "NaN",
        "Infinity",
        "$5",
        "5 USD",
        "1e3",
        "5.001",
        10_000_001,
        True,
        "",
        [],
        "10000.01",
    ]
    for bad in bad_budgets:
        status, body = request(api, {"name": "bad", "count": 1, "budget": bad})
        assert status == 422, (bad, body)
        assert [f["field"] for f in body["fields"]] == ["budget"], (bad, body)
    assert table_items(ddb) == before


# --- monthly budgets and admission control ----------------------------------------------------------


def test_an_owner_at_their_monthly_budget_is_refused_with_the_figures(api, ddb):
    status, budget = api.call("PUT", "/admin/budgets", as_=ADMIN, body={"owner": ALICE, "monthly_usd": "5"})
    assert status == 200
    assert budget["monthly_usd"] == "5"
    # 2 x $0.1785 x 4h = $1.43 fits
    assert request(api, {"name": "small", "count": 2})[0] == 201
    before = table_items(ddb)
    # 10 x $0.1785 x 4h = $7.14 does not: $3.57 is left
    status, body = request(api, {"name": "big", "count": 10})
    assert status == 409
    assert body["error"] == "BudgetExceeded"
    assert "$7.14" in body["message"]
    assert "$3.57" in body["message"]
    assert "$5.00" in body["message"]
    assert table_items(ddb) == before
    # bob has the template default and is not affected
    assert request(api, {"name": "big", "count": 10}, as_=BOB)[0] == 201


def test_only_administrators_set_budgets_and_read_the_report(api, ddb):
    before = table_items(ddb)
    status, body = api.call("PUT", "/admin/budgets", as_=ALICE, body={"owner": ALICE, "monthly_usd": "99999"})
    assert status == 403
    assert api.call("GET", "/admin/spend", as_=ALICE)[0] == 403
    for bad in [
        {"owner": ALICE, "monthly_usd": "-3"},
        {"owner": ALICE, "monthly_usd": "ten"},
        {"owner": "alice", "monthly_usd": "3"},
    ]:
        status, body = api.call("PUT", "/admin/budgets", as_=ADMIN, body=bad)
        assert status == 422, body
    assert table_items(ddb) == before


def test_the_spend_report_totals_each_owner(api, fleet):
    _, a = request(api, {"name": "a1", "count": 2})
    _, b = request(api, {"name": "b1", "count": 1}, as_=BOB)
    launched(fleet, a["id"], 2, at=fleet.t0)
    launched(fleet, b["id"], 1, at=fleet.t0)
    status, report = api.call("GET", "/admin/spend", as_=ADMIN)
    assert status == 200
    owners = {o["owner"]: o for o in report["owners"]}
    assert set(owners) == {ALICE, BOB}
    assert owners[ALICE]["annexes"] == 1
    assert Decimal(owners[ALICE]["live_usd_per_hour"]) == 2 * SNAPSHOT_C7I
    assert Decimal(owners[BOB]["live_usd_per_hour"]) == SNAPSHOT_C7I


# --- extensions --------------------------------------------------------------------------------------


def test_an_extension_shows_its_cost_and_respects_the_monthly_budget(api, fleet, ddb):
    _, annex = request(api, {"name": "ext", "count": 2})
    launched(fleet, annex["id"], 2, at=fleet.t0)
    # What would 2h more cost? 2 x $0.1785 x 2h = $0.71
    status, quote = api.call("POST", "/estimates", body={"extend": {"annex_id": annex["id"], "by": "2h"}})
    assert status == 200
    assert quote["adds_usd"] == "0.71"
    assert quote["allowed"] is True
    status, ext = api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "2h"})
    assert status == 200
    assert ext["quote"]["adds_usd"] == "0.71"
    # With a monthly budget that cannot cover it, the extension is refused and the lease stays
    api.call("PUT", "/admin/budgets", as_=ADMIN, body={"owner": ALICE, "monthly_usd": "2"})
    before = fleet.store.get_annex(annex["id"]).lease_expires_at
    status, quote = api.call("POST", "/estimates", body={"extend": {"annex_id": annex["id"], "by": "10h"}})
    assert quote["allowed"] is False
    assert "budget" in quote["refusal"]
    status, body = api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "10h"})
    assert status == 409
    assert body["error"] == "BudgetExceeded"
    assert fleet.store.get_annex(annex["id"]).lease_expires_at == before


# --- notices -----------------------------------------------------------------------------------------


def test_a_lease_ending_notice_goes_out_once_before_the_lease_ends(api, fleet, lease_check_fn, bus):
    _, annex = request(api, {"name": "soon", "count": 1, "lease": "1h"})
    launched(fleet, annex["id"], 1, at=fleet.t0)
    expiry = parse_time(annex["lease_expires_at"])
    check(lease_check_fn, expiry - timedelta(minutes=16))
    assert bus() == []
    check(lease_check_fn, expiry - timedelta(minutes=14))
    check(lease_check_fn, expiry - timedelta(minutes=13))
    [notice] = bus()
    assert notice["source"] == "annex"
    assert notice["detail-type"] == "Annex Lease Ending"
    detail = notice["detail"]
    assert detail["owner"] == ALICE
    assert detail["annex_id"] == annex["id"]
    assert detail["command"] == "annex-client extend soon --by 1h"
    assert "annex-client extend soon --by 1h" in detail["message"]
    assert Decimal(detail["accrued_usd"]) > 0
    # an extension earns a new notice before the new end
    api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "1h"})
    check(lease_check_fn, expiry + timedelta(minutes=50))
    assert [n["detail-type"] for n in bus()] == ["Annex Lease Ending"]


@pytest.fixture
def notices_fn(ddb, monkeypatch):
    from tests.integration.failsafe.conftest import _handler

    yield from _handler("notices", "NoticesFunction", monkeypatch)


def test_an_ended_annex_sends_one_ended_notice_whatever_ended_it(api, fleet, notices_fn, bus):
    from annex_local.streams import StreamReader, filter_patterns, lambda_event, passes

    reader = StreamReader(TABLE)
    patterns = filter_patterns("NoticesFunction")
    _, annex = request(api, {"name": "done", "count": 1})
    launched(fleet, annex["id"], 1, at=fleet.t0)
    # Nothing that is not an annex ending reaches the function (the template's filter)
    assert [r for r in reader.poll() if passes(patterns, r)] == []

    # When alice stops it
    assert api.call("POST", f"/annexes/{annex['id']}/stop", body={})[0] == 200
    records = [r for r in reader.poll() if passes(patterns, r)]
    assert len(records) == 1
    # and the stream delivers the record twice
    notices_fn(lambda_event(records + records), at=fleet.t0 + timedelta(minutes=5))

    # Then alice's subscribers get exactly one notice, naming the annex, its cost and the command
    [notice] = bus()
    assert notice["detail-type"] == "Annex Ended"
    detail = notice["detail"]
    assert (detail["name"], detail["owner"], detail["end_reason"]) == ("done", ALICE, "stopped")
    assert Decimal(detail["accrued_usd"]) >= 0
    assert detail["command"] == "annex-client status done"


def test_a_budget_below_what_is_spent_is_refused_and_a_new_one_moves_the_due_time(api, fleet, ddb):
    _, annex = request(api, {"name": "rebudget", "count": 2, "budget": "5"})
    launched(fleet, annex["id"], 2, at=fleet.t0 - timedelta(hours=2))  # $0.71 spent by now
    before = table_items(ddb)
    for bad, why in (("0.50", "already cost $0.71"), ("-1", ""), ("abc", ""), ("20000", "at most")):
        status, body = api.call("POST", f"/annexes/{annex['id']}/budget", body={"budget": bad})
        assert status == 422, (bad, body)
        assert [f["field"] for f in body["fields"]] == ["budget"]
        assert why in body["message"] + json.dumps(body["fields"])
    assert table_items(ddb) == before
    # bob cannot see it, let alone change it
    assert api.call("POST", f"/annexes/{annex['id']}/budget", as_=BOB, body={"budget": "9"})[0] == 404
    due_before = fleet.store.budget_due(annex["id"])
    status, view = api.call("POST", f"/annexes/{annex['id']}/budget", body={"budget": "9"})
    assert status == 200
    assert view["budget_usd"] == "9"
    assert view["cost"]["budget_usd"] == "9"
    assert any(e["action"] == "budget" and e["detail"] == "$5 -> $9" for e in view["history"])
    due_after = fleet.store.budget_due(annex["id"])
    assert due_before is not None
    assert due_after is not None
    assert due_after.due_at > due_before.due_at


def test_the_spend_report_refuses_months_it_cannot_have(api):
    for month in ("0000-01", "9999-12", "2026-13", "26-12"):
        status, body = api.call("GET", "/admin/spend", as_=ADMIN, query={"month": month})
        assert status == 422, (month, body)
        assert [f["field"] for f in body["fields"]] == ["month"]
