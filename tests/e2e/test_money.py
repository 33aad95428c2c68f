"""Money on the running local stack: a request with --budget ends by budget in the cloud, and an e-mail
subscriber gets a notice before the lease ends (the local stack delivers notices as SNS would, through
moto's filter-policy matcher, into STATE_DIR/notices.jsonl)."""

from __future__ import annotations

import json
from datetime import datetime

from tests.e2e.conftest import RunningStack, wait_for

LIVE = ("pending", "running")


def notices(stack: RunningStack) -> list[dict]:
    path = stack.state_dir / "notices.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_request_with_a_budget_ends_by_budget(stack):
    # 2 x c7i.xlarge at the snapshot's $0.1785/h reach $0.01 in about 100 s
    done = stack.client(
        "request", "capped", "--count", "2", "--lease", "10m", "--budget", "0.01", "--yes", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert "$0.01: the annex ends (budget-reached)" in done.stderr
    annex = json.loads(done.stdout)
    assert annex["budget_usd"] == "0.01"

    def ended():
        detail = stack.client_json("status", annex["id"])
        return detail if detail["state"] == "ended" else None

    detail = wait_for("the annex to end by budget", ended, timeout=180, interval=2)
    assert detail["end_reason"] == "budget-reached"
    assert not set(stack.instances(annex["id"]).values()) & set(LIVE)
    assert float(detail["cost"]["accrued_usd"]) <= 0.01
    [end] = [e for e in detail["history"] if e["action"] == "ended"]
    assert end["actor"] == "budget-check"
    assert "reached its budget $0.01" in end["detail"]
    shown = stack.client("status", annex["id"])
    assert "ended (budget-reached)" in shown.stdout


def test_a_subscriber_gets_a_notice_before_the_lease_ends_and_nobody_else_does(stack):
    for who in ("alice", "bob"):
        done = stack.client("notify", "--email", f"{who}@example.org", profile=who)
        assert done.returncode == 0, done.stderr
    done = stack.client("request", "noticed", "--count", "1", "--lease", "3m", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    annex = json.loads(done.stdout)

    def delivered():
        return [
            n
            for n in notices(stack)
            if n["message"]["detail"]["annex_id"] == annex["id"]
            and n["message"]["detail-type"] == "Annex Lease Ending"
        ]

    [notice] = wait_for("a lease-ending notice", delivered, timeout=60)
    assert notice["endpoint"] == "alice@example.org"
    assert notice["protocol"] == "email"
    detail = notice["message"]["detail"]
    assert detail["command"] == "annex-client extend noticed --by 1h"
    assert "annex-client extend noticed --by 1h" in detail["message"]
    lease_end = datetime.fromisoformat(annex["lease_expires_at"].replace("Z", "+00:00"))
    assert datetime.fromisoformat(notice["delivered_at"].replace("Z", "+00:00")) < lease_end
    # bob's subscription filters on bob: he got nothing about alice's annex
    assert all(
        n["endpoint"] != "bob@example.org"
        for n in notices(stack)
        if n["message"]["detail"]["annex_id"] == annex["id"]
    )
    stopped = stack.client("stop", "noticed", "--yes")
    assert stopped.returncode == 0, stopped.stderr
    # and the end of it is a notice too
    ends = wait_for(
        "an ended notice",
        lambda: [
            n
            for n in notices(stack)
            if n["message"]["detail"]["annex_id"] == annex["id"]
            and n["message"]["detail-type"] == "Annex Ended"
        ],
        timeout=30,
    )
    assert [n["endpoint"] for n in ends] == ["alice@example.org"]
