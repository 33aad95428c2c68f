"""Request function: cold import time (fresh processes) and warm in-process latency of POST /annexes
against moto, by one owner who keeps every annex they requested (the last LIVE of them live, the others
stopped, as a user's history builds up): admission control must not read the annexes kept. Prints
figures; asserts nothing about speed."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "annex"), str(ROOT), str(ROOT / "local")]

COLD_RUNS = 7
WARM_CALLS = 100
COUNTED_FROM = 10  # the first calls warm caches (cold-start work)
LIVE = 3  # annexes the owner keeps live; each older one is stopped after the next is requested


def cold_import_seconds() -> list[float]:
    code = "import time; t=time.perf_counter(); import functions.request.app; print(time.perf_counter()-t)"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'layers' / 'annex'}:{ROOT}",
        "POWERTOOLS_TRACE_DISABLED": "1",
    }
    out = []
    for _ in range(COLD_RUNS):
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        out.append(float(res.stdout.strip()))
    return out


def warm_latency_seconds() -> list[float]:
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        POWERTOOLS_TRACE_DISABLED="1",
        POWERTOOLS_METRICS_NAMESPACE="AnnexBench",
        POWERTOOLS_METRICS_DISABLED="true",  # no metric lines between the figures
        POWERTOOLS_LOG_LEVEL="WARNING",
    )
    import json

    import boto3
    from annex_local import moto_ec2
    from annex_local.events import FakeContext, rest_event
    from annex_local.template import resolve_environment, table_create_kwargs
    from moto import mock_aws

    moto_ec2.install()  # EC2's iam-instance-profile.arn filter, which the inventory uses
    with mock_aws():
        # Without the table's stream: the request function does not read it, and moto copies every stream
        # record kept so far on each transaction (minutes and gigabytes over a few hundred requests).
        table = table_create_kwargs("bench-annex")
        table.pop("StreamSpecification", None)
        boto3.client("dynamodb").create_table(**table)
        env = resolve_environment(
            "RequestFunction",
            table_name="bench-annex",
            stack_name="bench",
            overrides={
                "MAX_LIVE_INSTANCES_PER_OWNER": "100000",
                "MAX_LIVE_INSTANCES": "100000",
                "AnnexInstanceProfile.Arn": "arn:aws:iam::123456789012:instance-profile/bench",
                "LeaseTimerQueue": "",  # no lease timers: the 4h leases here would arm none anyway
            },
        )
        os.environ.update(env)
        from functions.request import app

        ctx = FakeContext("request")
        owner = "arn:aws:iam::123456789012:user/bench"
        timings, overheads, calls = [], [], []
        live: list[str] = []
        in_aws = {"t": 0.0, "n": 0, "start": 0.0}

        def before(**_kw):
            in_aws["start"] = time.perf_counter()

        def after(**_kw):
            in_aws["t"] += time.perf_counter() - in_aws["start"]
            in_aws["n"] += 1

        from annex.aws import clients

        for service in ("dynamodb", "ec2"):
            clients.client(service).meta.events.register("before-call", before)
            clients.client(service).meta.events.register("after-call", after)
        for i in range(WARM_CALLS):
            event = rest_event(
                "POST",
                "/annexes",
                caller_arn=owner,
                body={"name": f"bench-{i}", "count": 1, "lease": "1h"},
            )
            in_aws.update(t=0.0, n=0)
            start = time.perf_counter()
            resp = app.handler(event, ctx)
            total = time.perf_counter() - start
            assert resp["statusCode"] == 201, json.loads(resp["body"])
            timings.append(total)
            overheads.append(total - in_aws["t"])
            calls.append(in_aws["n"])
            live.append(json.loads(resp["body"])["id"])
            while len(live) > LIVE:  # not measured: the owner stops their oldest live annex
                stop = rest_event("POST", f"/annexes/{live.pop(0)}/stop", caller_arn=owner)
                assert app.handler(stop, ctx)["statusCode"] == 200
        # the first calls warm caches (cold-start work)
        return timings[COUNTED_FROM:], overheads[COUNTED_FROM:], calls[COUNTED_FROM:]


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def main() -> None:
    cold = cold_import_seconds()
    print(
        f"request function cold import ({COLD_RUNS} fresh processes): min {ms(min(cold))}, "
        f"median {ms(statistics.median(cold))}, max {ms(max(cold))}"
    )
    warm, overhead, calls = warm_latency_seconds()
    q = statistics.quantiles(warm, n=100)
    qo = statistics.quantiles(overhead, n=100)
    print(
        f"POST /annexes warm in-process against moto ({len(warm)} calls): median {ms(statistics.median(warm))}, "
        f"p95 {ms(q[94])}, max {ms(max(warm))}"
    )
    print(
        f"  of which our code (time outside AWS calls): median {ms(statistics.median(overhead))}, "
        f"p95 {ms(qo[94])}; the rest is moto, whose transactions deep-copy the whole table"
    )
    print(
        f"AWS calls per POST /annexes, owner keeping {COUNTED_FROM} to {WARM_CALLS - 1} annexes ({LIVE} live): "
        f"mean {statistics.mean(calls):.1f}, min {min(calls)}, max {max(calls)}; "
        f"at {COUNTED_FROM} annexes {calls[0]}, at {WARM_CALLS - 1} annexes {calls[-1]}"
    )
    print(f"ratio cold import / warm own-code median: {min(cold) / statistics.median(overhead):.0f}x")


if __name__ == "__main__":
    main()
