"""Lease enforcement lag on the local stack: for each of N annexes, the time from its lease expiry to the
TerminateInstances call that stops its instance. Run at the template's sweep period (one minute) and at
the fast local period. Prints min/median/max per period.

Leases are staggered across one minute (all due within the same minute), so the lag samples every phase
of the schedule; the instances' own timers are off, so the cloud path (lease timers armed by the
lease-check, the lease-check as backstop) is measured alone.
Usage: python bench/bench_lease_lag.py [--annexes 50] [--periods default]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "local")]

from annex_local.runtime import install_code_paths  # noqa: E402

install_code_paths()

from annex.aws import clients  # noqa: E402
from annex.core.clock import parse_time  # noqa: E402
from annex_local.scheduler import schedules_from_template  # noqa: E402
from annex_local.sigv4 import sign_headers  # noqa: E402
from annex_local.stack import LocalStack, Options  # noqa: E402

LEASE_SECONDS = 60  # the shortest lease the --fast parameters allow (MinLease=1m)


def post(stack: LocalStack, path: str, body: dict) -> dict:
    key, secret = stack.users["alice"]
    url = stack.api_url + path
    data = json.dumps(body).encode()
    headers = sign_headers(
        "POST",
        url,
        access_key=key,
        secret_key=secret,
        region="us-east-1",
        body=data,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method="POST")) as r:
        return json.loads(r.read())


def measure(annexes: int, sweep_period: float | None) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        # The instances' own timers off (no heartbeats, so no dead-man switch and no `terminate` answer;
        # the boot grace longer than the run, so idle-reap leaves them alone): the cloud path alone.
        stack = LocalStack(
            Options(
                state_dir=Path(tmp),
                fast=True,
                sweep_period=sweep_period,
                heartbeat_period=3600.0,
                params={"BootGrace": "30m", "HeartbeatLossGrace": "30m"},
            )
        )
        # --fast sets a 5 s sweep; for the default period, drop back to the template's schedules.
        period = sweep_period or min(s.period for s in schedules_from_template())
        stack.options.sweep_period = period
        terminated_at: dict[str, float] = {}
        lock = threading.Lock()

        def on_terminate(params, **_kw):
            with lock:
                for instance_id in params.get("InstanceIds", []):
                    terminated_at.setdefault(instance_id, time.time())

        stack.start()
        try:
            clients.ec2().meta.events.register("before-parameter-build.ec2.TerminateInstances", on_terminate)
            stagger = 60.0 / annexes  # all leases fall due within the same minute
            created = []
            for i in range(annexes):
                created.append(
                    post(
                        stack,
                        "/annexes",
                        {
                            "name": f"lag-{i}",
                            "count": 1,
                            "lease": f"{LEASE_SECONDS}s",
                            "tags": {"annex-sim": "busy"},
                        },
                    )
                )
                time.sleep(stagger)
            ec2 = stack.aws.client("ec2")
            expiry = {a["id"]: parse_time(a["lease_expires_at"]).timestamp() for a in created}
            deadline = max(expiry.values()) + 3 * period + 30
            lags: dict[str, float] = {}
            while len(lags) < annexes and time.time() < deadline:
                time.sleep(1)
                resp = ec2.describe_instances(
                    Filters=[{"Name": "tag:annex:stack", "Values": [stack.options.stack_name]}]
                )
                for r in resp["Reservations"]:
                    for inst in r["Instances"]:
                        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                        annex_id = tags.get("annex:id")
                        with lock:
                            at = terminated_at.get(inst["InstanceId"])
                        if annex_id in expiry and at is not None and annex_id not in lags:
                            lags[annex_id] = at - expiry[annex_id]
            if len(lags) < annexes:
                raise SystemExit(f"only {len(lags)} of {annexes} annexes were terminated in time")
            return list(lags.values())
        finally:
            stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--annexes", type=int, default=50)
    ap.add_argument("--periods", default="default")
    args = ap.parse_args()
    print(
        f"lease expiry -> TerminateInstances lag, {args.annexes} annexes, leases staggered over one period "
        f"({datetime.now(UTC):%Y-%m-%d})"
    )
    for raw in args.periods.split(","):
        period = None if raw == "default" else float(raw)
        label = "template schedule (rate(1 minute))" if period is None else f"sweep every {period:g} s"
        lags = measure(args.annexes, period)
        print(
            f"  {label:38s} min {min(lags):6.1f} s  median {statistics.median(lags):6.1f} s  "
            f"max {max(lags):6.1f} s  (n={len(lags)}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)",
            file=sys.__stdout__,
        )
    print(
        f"cloud-path overshoot over {len(lags)} annexes: min {min(lags):.1f} s, "
        f"median {statistics.median(lags):.1f} s, max {max(lags):.1f} s",
        file=sys.__stdout__,  # the local runtime may have swapped sys.stdout to capture handler logs
    )


if __name__ == "__main__":
    main()
