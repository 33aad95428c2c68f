"""Lease enforcement lag on the local stack: for each of N annexes, the time from its lease expiry to the
TerminateInstances call that stops its instance. Run at the template's sweep period (one minute) and at
the fast local period. Prints min/median/max per period.

Leases are staggered across one minute (all due within the same minute), so the lag samples every phase
of the schedule; the instances' own timers are off, so the cloud path (lease timers armed by the
lease-check, the lease-check as backstop) is measured alone.

Per annex it prints what the lag is made of, each stage in seconds after the lease expiry: when its timer
was due to turn visible (sent + DelaySeconds: the delay is whole seconds, rounded up), when the queue
poller received it, when the lease-timer function started on it, and when TerminateInstances was called
(and by whom: the lease-timer or the lease-check backstop); then the median and max of each step. The load
average is printed with each run (`--burn N` runs N busy-looping processes beside it, to measure under
load).
Usage: python bench/bench_lease_lag.py [--annexes 50] [--periods default] [--burn 1] [--quiet]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "local")]

from annex_local import aws as aws_mod  # noqa: E402
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


@dataclass
class Trace:
    """What happened to one annex's lease end, in epoch seconds."""

    expiry: float = 0.0
    visible_at: list[float] = field(default_factory=list)  # each timer: sent + DelaySeconds
    received_at: float | None = None  # the first delivery to the lease-timer function (moto's clock)
    started_at: float | None = None  # the lease-timer invocation carrying it
    terminated_at: float | None = None
    by: str = ""  # who called TerminateInstances first


class Tracer:
    """Hooks on the functions' SQS and EC2 clients and on the local runtime's invocations."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.annexes: dict[str, Trace] = defaultdict(Trace)
        self.terminated: dict[str, tuple[float, str]] = {}  # instance id -> (first call, by whom)
        self.lease_checks: list[tuple[float, float]] = []  # (start, end) of each lease-check run

    def on_send(self, params: dict[str, Any], **_kw: Any) -> None:
        now = time.time()
        with self.lock:
            for entry in params.get("Entries", []):
                body = json.loads(entry["MessageBody"])
                self.annexes[body["annex_id"]].visible_at.append(now + int(entry.get("DelaySeconds", 0)))

    def on_terminate(self, params: dict[str, Any], **_kw: Any) -> None:
        now, who = time.time(), threading.current_thread().name
        with self.lock:
            for instance_id in params.get("InstanceIds", []):
                self.terminated.setdefault(instance_id, (now, "timer" if "LeaseTimer" in who else "sweep"))

    def wrap(self, invoke: Any) -> Any:
        def traced(function_id: str, event: Any) -> Any:
            started = time.time()
            if function_id == "LeaseTimerFunction":
                with self.lock:
                    for record in event.get("Records", []):
                        trace = self.annexes[json.loads(record["body"])["annex_id"]]
                        received = int(record["attributes"].get("ApproximateFirstReceiveTimestamp", 0)) / 1000
                        if trace.started_at is None:
                            trace.started_at, trace.received_at = started, received or None
            try:
                return invoke(function_id, event)
            finally:
                if function_id == "LeaseCheckFunction":
                    with self.lock:
                        self.lease_checks.append((started, time.time()))

        return traced


class AwsLockMeter:
    """Wraps the embedded AWS's one-request-at-a-time gate: per operation, the calls, the time they
    waited for the gate and the time they held it, while the annexes' leases fall due."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # (at, waited, held)

    def install(self) -> None:
        meter = self

        def call(gate: Any, environ: dict[str, Any], start_response: Any) -> Any:
            op = environ.get("HTTP_X_AMZ_TARGET") or _query_action(environ)
            if op.endswith("ReceiveMessage") and aws_mod._waits(environ):
                return gate.app(environ, start_response)
            asked = time.perf_counter()
            with gate.lock:
                got = time.perf_counter()
                body = gate.app(environ, start_response)
                try:
                    return [b"".join(body)]
                finally:
                    if hasattr(body, "close"):
                        body.close()
                    done = time.perf_counter()
                    with meter.lock:
                        meter.ops[op].append((time.time(), got - asked, done - got))

        aws_mod.OneRequestAtATime.__call__ = call  # type: ignore[method-assign]

    def report(self, start: float, end: float) -> None:
        rows = []
        for op, calls in self.ops.items():
            inside = [c for c in calls if start <= c[0] <= end]
            if inside:
                rows.append((sum(c[2] for c in inside), op, inside))
        span = end - start
        print(
            f"  embedded AWS while leases fell due ({span:.0f} s): busy {sum(r[0] for r in rows) / span:.0%}",
            file=sys.__stdout__,
        )
        for held, op, inside in sorted(rows, reverse=True)[:8]:
            print(
                f"    {op.split('.')[-1]:28s} {len(inside):5d} calls  held {held:5.1f} s  "
                f"wait median {statistics.median(c[1] for c in inside) * 1000:4.0f} ms  "
                f"max {max(c[1] for c in inside) * 1000:5.0f} ms",
                file=sys.__stdout__,
            )


def _query_action(environ: dict[str, Any]) -> str:
    """The Action of a query-protocol request (EC2, SNS, STS); the body is put back."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    fields = urllib.parse.parse_qs(body.decode(errors="replace"))
    return fields.get("Action", [environ.get("PATH_INFO", "?")])[0]


def _burn(until: float) -> None:
    while time.time() < until:
        pass


def measure(annexes: int, sweep_period: float | None, *, burn: int = 0, quiet: bool = False) -> list[float]:
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
        tracer = Tracer()
        meter = AwsLockMeter()
        meter.install()
        stack.runtime.invoke = tracer.wrap(stack.runtime.invoke)  # type: ignore[method-assign]
        burners = [
            multiprocessing.Process(target=_burn, args=(time.time() + 600,), daemon=True) for _ in range(burn)
        ]
        for burner in burners:
            burner.start()
        stack.start()
        try:
            clients.ec2().meta.events.register(
                "before-parameter-build.ec2.TerminateInstances", tracer.on_terminate
            )
            clients.client("sqs").meta.events.register(
                "provide-client-params.sqs.SendMessageBatch", tracer.on_send
            )
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
            with tracer.lock:
                for annex_id, at in expiry.items():
                    tracer.annexes[annex_id].expiry = at
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
                        with tracer.lock:
                            first = tracer.terminated.get(inst["InstanceId"])
                            if annex_id in expiry and first is not None and annex_id not in lags:
                                trace = tracer.annexes[annex_id]
                                trace.terminated_at, trace.by = first
                                lags[annex_id] = first[0] - expiry[annex_id]
            if len(lags) < annexes:
                raise SystemExit(f"only {len(lags)} of {annexes} annexes were terminated in time")
            report(tracer, expiry, quiet=quiet)
            meter.report(min(expiry.values()), max(expiry.values()) + 10)
            return list(lags.values())
        finally:
            stack.stop()
            for burner in burners:
                burner.terminate()
                burner.join()


def report(tracer: Tracer, expiry: dict[str, float], *, quiet: bool) -> None:
    """Per annex, each stage after its lease expiry; then the median and max of each step."""
    out = sys.__stdout__

    def rel(at: float | None, base: float | None) -> float | None:
        return None if at is None or base is None else at - base

    def fmt(value: float | None) -> str:
        return "    -" if value is None else f"{value:5.1f}"

    steps: dict[str, list[float]] = defaultdict(list)
    if not quiet:
        print("  annex                 timers  visible  received  started  terminated  by", file=out)
    for annex_id in sorted(expiry, key=expiry.__getitem__):
        t = tracer.annexes[annex_id]
        visible = min(t.visible_at) if t.visible_at else None
        stages = {
            "timer visible (delay rounded up)": rel(visible, t.expiry),
            "visible -> received (poll)": rel(t.received_at, visible),
            "received -> function start": rel(t.started_at, t.received_at),
            "function start -> TerminateInstances": rel(t.terminated_at, t.started_at)
            if t.by == "timer"
            else None,
        }
        for name, value in stages.items():
            if value is not None:
                steps[name].append(value)
        if not quiet:
            print(
                f"  {annex_id:20s}  {len(t.visible_at):6d}  {fmt(rel(visible, t.expiry))}  "
                f"{fmt(rel(t.received_at, t.expiry)):>8s}  {fmt(rel(t.started_at, t.expiry)):>7s}  "
                f"{fmt(rel(t.terminated_at, t.expiry)):>10s}  {t.by}",
                file=out,
            )
    for name, values in steps.items():
        print(
            f"  {name:38s} median {statistics.median(values):5.2f} s  max {max(values):5.2f} s  (n={len(values)})",
            file=out,
        )
    runs = [end - start for start, end in tracer.lease_checks]
    if runs:
        print(
            f"  lease-check runs: {len(runs)}, median {statistics.median(runs):.1f} s, max {max(runs):.1f} s",
            file=out,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--annexes", type=int, default=50)
    ap.add_argument("--periods", default="default")
    ap.add_argument("--burn", type=int, default=0, help="busy-looping processes beside the stack")
    ap.add_argument("--quiet", action="store_true", help="no per-annex rows")
    args = ap.parse_args()
    print(
        f"lease expiry -> TerminateInstances lag, {args.annexes} annexes, leases staggered over one period "
        f"({datetime.now(UTC):%Y-%m-%d})"
    )
    for raw in args.periods.split(","):
        period = None if raw == "default" else float(raw)
        label = "template schedule (rate(1 minute))" if period is None else f"sweep every {period:g} s"
        lags = measure(args.annexes, period, burn=args.burn, quiet=args.quiet)
        print(
            f"  {label:38s} min {min(lags):6.1f} s  median {statistics.median(lags):6.1f} s  "
            f"max {max(lags):6.1f} s  (n={len(lags)}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
            f"{f', {args.burn} burner(s)' if args.burn else ''})",
            file=sys.__stdout__,
        )
    print(
        f"cloud-path overshoot over {len(lags)} annexes: min {min(lags):.1f} s, "
        f"median {statistics.median(lags):.1f} s, max {max(lags):.1f} s",
        file=sys.__stdout__,  # the local runtime may have swapped sys.stdout to capture handler logs
    )


if __name__ == "__main__":
    main()
