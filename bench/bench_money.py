"""Money: DynamoDB calls per POST /annexes and GET /annexes/{id} as an owner keeps more ended annexes
(admission control reads the owner's month: their ledger and their live annexes), and the budget check's
reads as the not-due population grows (it must grow with what is due).
In process against moto. Prints figures; asserts nothing about speed."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "annex"), str(ROOT), str(ROOT / "local")]

ALICE = "arn:aws:iam::123456789012:user/alice"


def main() -> None:
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        POWERTOOLS_TRACE_DISABLED="1",
        POWERTOOLS_METRICS_NAMESPACE="AnnexBench",
        POWERTOOLS_LOG_LEVEL="WARNING",
    )
    import json

    import boto3
    from annex.aws import clients
    from annex.core.clock import utcnow
    from annex.core.config import LeaseCheckSettings
    from annex.core.models import Annex, AnnexState, Market
    from annex.money.checks import run_money_check
    from annex.money.notices import Notifier
    from annex.store import AnnexStore
    from annex_local import moto_ec2
    from annex_local.events import FakeContext, rest_event
    from annex_local.template import resolve_environment, table_create_kwargs
    from moto import mock_aws

    moto_ec2.install()  # EC2's iam-instance-profile.arn filter, which the inventory uses
    with mock_aws():
        boto3.client("dynamodb").create_table(**table_create_kwargs("bench-annex"))
        boto3.client("events").create_event_bus(Name="bench-events")
        env = resolve_environment(
            "RequestFunction",
            table_name="bench-annex",
            stack_name="bench",
            overrides={
                "MAX_LIVE_INSTANCES": "100000",
                "MAX_LIVE_INSTANCES_PER_OWNER": "100000",
                "MAX_INSTANCES_PER_ANNEX": "50",
                "AnnexInstanceProfile.Arn": "arn:aws:iam::123456789012:instance-profile/bench",
                "LeaseTimerQueue": "",
            },
        )
        os.environ.update(env)
        import functions.request.app as app

        calls: Counter[str] = Counter()
        ddb = clients.dynamodb()
        ddb.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.update([model.name]))

        def call(method: str, path: str, body=None, query=None) -> dict:
            event = rest_event(method, path, caller_arn=ALICE, body=body, query=query)
            resp = app.handler(event, FakeContext("request"))
            assert resp["statusCode"] in (200, 201), resp
            return json.loads(resp["body"])

        def measure(label: str, method: str, path: str, body=None) -> dict:
            calls.clear()
            out = call(method, path, body)
            print(f"{label}: {sum(calls.values())} DynamoDB calls {dict(sorted(calls.items()))}")
            return out

        # The owner keeps `prior` annexes they stopped (ended this month); the measured one is live.
        for prior in (0, 10, 40):
            while len(call("GET", "/annexes", query={"limit": "100"}).get("annexes", [])) < prior:
                n = len(call("GET", "/annexes", query={"limit": "100"})["annexes"])
                kept = call("POST", "/annexes", {"name": f"prior-{n}", "count": 1, "lease": "1h"})
                call("POST", f"/annexes/{kept['id']}/stop")
            annex = measure(
                f"POST /annexes with --budget, owner keeping {prior} ended annexes",
                "POST",
                "/annexes",
                {"name": f"b-{prior}", "count": 2, "lease": "1h", "budget": "5"},
            )
            measure(
                f"GET /annexes/{{id}}, owner keeping {prior} ended annexes", "GET", f"/annexes/{annex['id']}"
            )
            call("POST", f"/annexes/{annex['id']}/stop")

        # The budget check: 20 budgeted annexes due now, and a growing population that is not due.
        store = AnnexStore(ddb, "bench-annex")
        now = utcnow()
        profile = "arn:aws:iam::123456789012:instance-profile/bench"  # the budget check launches nothing
        lease_env = resolve_environment(
            "LeaseCheckFunction",
            table_name="bench-annex",
            stack_name="bench",
            overrides={"AnnexInstanceProfile.Arn": profile, "LeaseTimerQueue": ""},
        )
        settings = LeaseCheckSettings.from_env(lease_env)
        notifier = Notifier(boto3.client("events"), "bench-events")
        from annex.aws.inventory import Ec2Inventory

        ec2 = Ec2Inventory(boto3.client("ec2"), "bench", instance_profile_arn=profile)

        def budgeted(i: int, due_in: timedelta) -> None:
            a = Annex(
                id=store.new_annex_id(),
                name=f"x{i}",
                owner=f"arn:aws:iam::123456789012:user/u{i % 7}",
                state=AnnexState.REQUESTED,
                count=1,
                instance_types=["c7i.xlarge"],
                market=Market.ON_DEMAND,
                lease_expires_at=now + timedelta(days=1),
                idle_timeout_seconds=600,
                created_at=now,
                updated_at=now,
                budget_usd="1000",
            )
            store.create_annex(
                a,
                fingerprint="b",
                max_live_per_owner=100000,
                max_live_in_stack=100000,
                actor="b",
                retention=timedelta(days=1),
            )
            store.schedule_budget(a.id, now + due_in, expires=now + timedelta(days=2))

        # Only the budget reads are measured here (the lease-ending and fleet figures read live annexes).
        for i in range(20):
            budgeted(i, timedelta(seconds=-1))
        names = itertools.count(10_000)
        for not_due in (100, 1000, 5000):
            while sum(1 for _ in store.due_budgets(now=now + timedelta(days=3650))) < 20 + not_due:
                # Not-due budget items alone (their annexes do not matter to the index read measured).
                for _ in range(100):
                    store.schedule_budget(
                        f"ax-{next(names):016x}", now + timedelta(hours=5), expires=now + timedelta(days=2)
                    )
            before = store.items_read
            started = time.perf_counter()
            due = list(store.due_budgets(now=now))
            print(
                f"budget check with {not_due} budgeted annexes not due and {len(due)} due: "
                f"{store.items_read - before} index items read ({time.perf_counter() - started:.2f} s)"
            )
        check = run_money_check(store, ec2, notifier, settings, now=now, retention=timedelta(days=1))
        print(f"one money check: {check.budgets_due} budgets due, {check.rescheduled} rescheduled")


if __name__ == "__main__":
    main()
