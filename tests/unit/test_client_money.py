"""The client's money: --budget, the API's figures before a request, the budget after an extension,
cost in status and list, totals per owner for administrators, notices, and the admin commands."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from annex_client import commands, render
from annex_client.cli import main

from tests.unit.client_fakes import ALICE, HEALTH, Wire, annex, quote_for

REQUEST = ["request", "bio", "--count", "3", "--lease", "4h"]
BOB = "arn:aws:iam::123456789012:user/bob"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("bad", ["-5", "0", "$50", "50USD", "1e3", "12.345", "NaN", "abc"])
def test_a_bad_budget_is_a_usage_error_and_nothing_is_sent(capsys, monkeypatch, bad):
    wire = Wire.install(monkeypatch)
    code, _, err = run(capsys, *REQUEST, "--budget", bad, "--yes")
    assert code == 2
    assert "--budget" in err
    assert wire.calls == []


def test_request_shows_the_apis_cost_the_budget_and_the_month_and_sends_the_budget(capsys, monkeypatch):
    def with_budget(body):
        q = quote_for(body)
        return {**q, "monthly_budget_usd": "100", "month_committed_usd": "20", "remaining_usd": "80"}

    wire = (
        Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH)).on("POST", "/annexes", (201, annex()))
    )
    wire.on("POST", "/estimates", (200, with_budget({"request": {"count": 3, "lease": "4h"}})))
    code, _, err = run(capsys, *REQUEST, "--budget", "1.50", "--yes")
    assert code == 0
    assert "about $2.14 = 3 x 4h x $0.1785/h (an estimate: AWS Price List API, as of 2026-11-01)" in err
    assert "$1.50: the annex ends (budget-reached)" in err
    assert "$20.00 of your $100.00 budget for 2026-11 spent or committed; $80.00 left" in err
    create = [c for c in wire.calls if c.path == "/annexes"][-1]
    assert create.body["budget"] == "1.50"
    estimate = [c for c in wire.calls if c.path == "/estimates"][-1]
    assert "client_token" not in estimate.body["request"]


def test_a_request_the_monthly_budget_refuses_is_refused_before_asking(capsys, monkeypatch):
    refusal = "this request would add up to $7.14, but only $3.57 of your $5.00 budget for 2026-11 is left"
    wire = Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH))
    wire.on(
        "POST",
        "/estimates",
        (200, {**quote_for({"request": {"count": 3}}), "allowed": False, "refusal": refusal}),
    )
    code, _, err = run(capsys, *REQUEST, "--yes")
    assert code == 1
    assert refusal in err
    assert "/annexes" not in wire.paths("POST")


def test_extend_says_what_it_adds_against_the_month(capsys, monkeypatch):
    result = {
        "annex": annex(state="running"),
        "capped": False,
        "message": "ok",
        "quote": {
            "adds_usd": "0.71",
            "month": "2026-11",
            "monthly_budget_usd": "100",
            "month_committed_usd": "21",
            "remaining_usd": "79",
        },
    }
    wire = Wire.install(monkeypatch).on("POST", "/annexes/ax-0123456789abcdef/extend", (200, result))
    wire.on("GET", "/annexes/ax-0123456789abcdef", (200, annex(state="running")))
    wire.on("GET", "/health", (200, HEALTH))
    wire.on("POST", "/estimates", (200, {**result["quote"], "price": None, "allowed": True}))
    monkeypatch.setattr(commands, "_now", lambda: datetime(2026, 11, 22, 16, 0, tzinfo=UTC))
    code, out, err = run(capsys, "extend", "ax-0123456789abcdef", "--by", "2h", "--yes")
    assert "this month  $21.00 of your $100.00 budget" in err  # in the plan, before asking
    assert code == 0
    assert (
        "It adds about $0.71; $21.00 of your $100.00 budget for 2026-11 spent or committed; $79.00 left."
        in out
    )


COST = {
    "accrued_usd": "1.25",
    "usd_per_hour": "0.357",
    "forecast_usd": "2.5",
    "upper_bound": False,
    "complete": True,
    "unpriced_types": [],
    "budget_usd": "5",
    "budget_reached_at": "2026-11-22T20:00:00Z",
    "prices": [
        {
            "instance_type": "c7i.xlarge",
            "market": "on-demand",
            "usd_per_hour": "0.1785",
            "source": "snapshot",
            "as_of": "2024-01-01T00:00:00Z",
            "source_detail": "snapshot.json",
        }
    ],
}


def test_status_shows_cost_rate_forecast_budget_and_where_prices_came_from():
    detail = annex(state="running", launched_count=2, budget_usd="5", cost=COST, instances=[], history=[])
    text = render.status_text(detail, datetime(2026, 11, 22, 16, tzinfo=UTC), UTC)
    assert "$1.25 so far" in text
    assert "$0.357/h now; $2.50 if it runs to the lease end" in text
    assert "$5.00, reached about 2026-11-22 20:00 UTC" in text
    assert "c7i.xlarge on-demand $0.1785/h (the stack's price snapshot, as of 2024-01-01)" in text


def test_list_all_totals_per_owner(capsys, monkeypatch):
    rows = [
        annex("a", "ax-00000000000000a1", state="running", cost={**COST, "accrued_usd": "1"}),
        annex("b", "ax-00000000000000a2", state="ended", cost={**COST, "accrued_usd": "2"}),
        annex("c", "ax-00000000000000a3", state="running", owner=BOB, cost={**COST, "accrued_usd": "0.5"}),
    ]
    Wire.install(monkeypatch).on("GET", "/annexes", (200, {"annexes": rows, "next_token": None}))
    code, out, _ = run(capsys, "list", "--all")
    assert code == 0
    totals = {line.split()[0]: line.split() for line in out.splitlines()[-3:]}
    assert totals["alice"][1:] == ["2", "1", "$3.00", "$0.357/h"]
    assert totals["bob"][1:] == ["1", "1", "$0.50", "$0.357/h"]
    assert "$1.00/$5.00" in out  # the cost column: so far / budget


def test_notify_subscribes_the_given_address(capsys, monkeypatch):
    answer = {
        "email": "a@example.org",
        "owner": ALICE,
        "subscription": "pending confirmation",
        "message": "AWS sends a confirmation e-mail to a@example.org",
    }
    wire = Wire.install(monkeypatch).on("POST", "/notifications", (200, answer))
    code, out, _ = run(capsys, "notify", "--email", "a@example.org")
    assert code == 0
    assert wire.calls[-1].body == {"email": "a@example.org"}
    assert "confirmation e-mail" in out
