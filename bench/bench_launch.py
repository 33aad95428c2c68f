"""Launch cost under moto: the EC2 (and DynamoDB) API calls the launch function makes to launch N = 1, 100
and 1,000 instances of one type, counted with botocore event hooks, and its wall time.

Checks the promise: at most ceil(N / 100) launch calls (RunInstances or CreateFleet). Prints figures and
ratios; exits non-zero if a check fails. moto is in process, so wall time measures our code plus moto,
not EC2: real RunInstances calls take seconds each.

    .venv/bin/python bench/bench_launch.py
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "annex"), str(ROOT)]
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_SERVICE_NAME": "annex",
        "POWERTOOLS_METRICS_NAMESPACE": "AnnexBench",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }
)
for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(var, None)

import boto3  # noqa: E402
from annex.aws import clients  # noqa: E402
from annex.core.models import Market  # noqa: E402
from annex.store import AnnexStore  # noqa: E402
from annex_local.events import FakeContext  # noqa: E402
from annex_local.pool import create_pool, put_requested_annex  # noqa: E402
from annex_local.streams import StreamReader, filter_patterns, lambda_event, passes  # noqa: E402
from annex_local.template import resolve_environment, table_create_kwargs  # noqa: E402
from moto import mock_aws  # noqa: E402

TABLE = "annex-bench"
STACK = "annex-bench"
OWNER = "arn:aws:iam::123456789012:user/bench"
SIZES = (1, 100, 1000)
LAUNCH_OPS = ("RunInstances", "CreateFleet")


def count_calls(client: Any, counter: Counter[str], seconds: Counter[str], service: str) -> None:
    """Count each API call by operation, and the time spent inside calls by service."""
    started: list[float] = []

    def before(model: Any, **_: Any) -> None:
        counter[f"{service}:{model.name}"] += 1
        started.append(time.perf_counter())

    def after(**_: Any) -> None:
        seconds[service] += time.perf_counter() - started.pop()

    client.meta.events.register(f"before-call.{service}", before)
    client.meta.events.register(f"after-call.{service}", after)


def run(count: int, market: Market) -> dict[str, Any]:
    from annex_local import moto_ec2

    moto_ec2.install()  # EC2's iam-instance-profile.arn filter, which the inventory uses
    with mock_aws():
        boto3.client("dynamodb", region_name="us-east-1").create_table(**table_create_kwargs(TABLE))
        pool = create_pool()
        env = resolve_environment(
            "LaunchFunction", table_name=TABLE, stack_name=STACK, overrides=pool.launch_overrides()
        )
        os.environ.update({**env, "POWERTOOLS_LOG_LEVEL": "WARNING"})
        app = importlib.import_module("functions.launch.app")
        app.settings.cache_clear()
        app.launcher.cache_clear()
        clients.client.cache_clear()
        clients.ec2_launch.cache_clear()

        store = AnnexStore(clients.dynamodb(), TABLE)
        annex = put_requested_annex(store, owner=OWNER, name=f"bench-{count}", count=count, market=market)
        patterns = filter_patterns("LaunchFunction")
        records = [r for r in StreamReader(TABLE).poll() if passes(patterns, r)]
        assert len(records) == 1, records

        app.launcher()  # clients and settings warm, as in a warm Lambda container
        calls: Counter[str] = Counter()
        inside: Counter[str] = Counter()
        count_calls(clients.ec2_launch(), calls, inside, "ec2")
        count_calls(clients.ec2(), calls, inside, "ec2")
        count_calls(clients.dynamodb(), calls, inside, "dynamodb")

        with contextlib.redirect_stdout(io.StringIO()):
            started = time.perf_counter()
            response = app.handler(lambda_event(records), FakeContext("launch"))
            elapsed = time.perf_counter() - started
        assert response == {"batchItemFailures": []}, response
        state = store.get_annex(annex.id)
        running = sum(
            len(r["Instances"])
            for page in boto3.client("ec2", region_name="us-east-1")
            .get_paginator("describe_instances")
            .paginate(Filters=[{"Name": "tag:annex:id", "Values": [annex.id]}])
            for r in page["Reservations"]
        )
        return {
            "n": count,
            "market": market.value,
            "state": state.state.value,
            "instances": running,
            "launch_calls": sum(calls[f"ec2:{op}"] for op in LAUNCH_OPS),
            "ec2_calls": sum(v for k, v in calls.items() if k.startswith("ec2:")),
            "ddb_calls": sum(v for k, v in calls.items() if k.startswith("dynamodb:")),
            "calls": dict(sorted(calls.items())),
            "seconds": elapsed,
            "ec2_seconds": inside["ec2"],
            "ddb_seconds": inside["dynamodb"],
        }


def main() -> int:
    failures = []
    results = []
    for market in (Market.ON_DEMAND, Market.SPOT):
        for n in SIZES:
            result = run(n, market)
            results.append(result)
            bound = math.ceil(n / 100)
            ok = result["launch_calls"] <= bound and result["instances"] == n and result["state"] == "running"
            if not ok:
                failures.append(result)
            result["bound"] = bound
            result["ok"] = ok

    print("Launch function under moto: one annex of N instances of one type, one stream record, warm clients")
    header = (
        f"{'market':<10}{'N':>6}{'launch calls':>14}{'<= ceil(N/100)':>16}{'EC2 calls':>11}"
        f"{'DDB calls':>11}{'wall s':>9}{'ms/inst':>9}  check"
    )
    print(header)
    for r in results:
        print(
            f"{r['market']:<10}{r['n']:>6}{r['launch_calls']:>14}{r['bound']:>16}{r['ec2_calls']:>11}"
            f"{r['ddb_calls']:>11}{r['seconds']:>9.2f}{1000 * r['seconds'] / r['n']:>9.1f}  "
            f"{'ok' if r['ok'] else 'FAIL'}"
        )
    print("\nWhere the wall time goes (seconds inside moto's EC2 / DynamoDB calls, the rest is ours):")
    for r in results:
        ours = r["seconds"] - r["ec2_seconds"] - r["ddb_seconds"]
        print(
            f"  {r['market']:<10} N={r['n']:<5} EC2 {r['ec2_seconds']:.2f}  DynamoDB {r['ddb_seconds']:.2f}"
            f"  launch function {ours:.2f}"
        )
    print("\nEC2 and DynamoDB calls by operation:")
    for r in results:
        print(f"  {r['market']:<10} N={r['n']:<5} {r['calls']}")
    print("\nRatios (N=1000 against N=100):")
    for market in ("on-demand", "spot"):
        by_n = {r["n"]: r for r in results if r["market"] == market}
        small, large = by_n[100], by_n[1000]
        print(
            f"  {market:<10} wall time x{large['seconds'] / small['seconds']:.1f}, "
            f"launch calls x{large['launch_calls'] / small['launch_calls']:.0f}, "
            f"DynamoDB calls x{large['ddb_calls'] / small['ddb_calls']:.1f} (one transaction per 100 instance records)"
        )
    if failures:
        print(
            f"\nFAILED: {len(failures)} run(s) broke the ceil(N/100) bound or did not launch N",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
