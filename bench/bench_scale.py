"""Scale: the real code paths at increasing N under moto, metered per AWS operation, projected to 100,000
instances / 10,000 annexes and set against AWS's documented limits.

What runs (in process, moto, the template's table and settings): heartbeat reports (HeartbeatService, a
sample of the fleet over six 60 s rounds: a whole cycle of what a steady report writes, a refresh of the
stored last-seen time on every third report and a move of the `due` entry on every other refresh;
reports in between write nothing), lease-check (due
leases + the orphan sweep, run once with leases due and once with none), idle-reap (once with silent
instances due, once with none), create + launch of an annex of 10 (the request and launch functions'
handlers on the table stream) and an extension (the request function's handler).

How it is metered: botocore hooks on every client count calls per operation; for each DynamoDB write the
item's image before and after (read from moto's backend, not through the metered client) gives the write
units (1 per KB of the larger image, doubled in transactions) and, by DynamoDB's documented rules for
global secondary indexes (a new index entry 1 write, a key change 2, a removal 1, a non-key change 1 only
if the index projects the attribute), the writes to each index and the partition key each lands on. Reads
are units per 4 KB of what came back (half when eventually consistent). A failed conditional write is
charged 1 unit per item. EC2: calls per operation, and instances per RunInstances/TerminateInstances
(the resource-rate buckets).

The projection (stated churn, `--lifetime`): 100,000 instances in 10,000 annexes of 10, heartbeats every
60 s, both sweeps every minute; every annex lives `--lifetime` (default 4h, the DefaultLease) and is
extended once; its instances end with its lease (lease-check); 1% of the running instances an hour are
reaped by idle-reap. Per-item costs come from the runs (the difference between a run with due work and
one without, and the slope over N of what grows with the fleet). The hottest partition key of each class
is its share of the load: the due shards' share is computed by hashing 100,000 instance keys with the
store's own `due_shard`; an annex's partition takes its own instances' heartbeats; STACK, the
all-annexes index key and the sweep status are single keys; owners are at least 1,000 (100,000 /
MaxLiveInstancesPerOwner's default 100). Durations are in-process wall times under moto (our code plus the
emulator), not AWS latencies.

Run: make bench   (or: .venv/bin/python bench/bench_scale.py [--lifetime 4h] [--sizes 100,500,2000])
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "annex"), str(ROOT), str(ROOT / "bench")]
os.environ.update(
    AWS_ACCESS_KEY_ID="bench",
    AWS_SECRET_ACCESS_KEY="bench",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    POWERTOOLS_TRACE_DISABLED="1",
    POWERTOOLS_SERVICE_NAME="annex",
    POWERTOOLS_METRICS_NAMESPACE="AnnexBench",
    POWERTOOLS_LOG_LEVEL="ERROR",
)
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_var, None)

import boto3  # noqa: E402
from annex.aws import clients  # noqa: E402
from annex.aws.inventory import Ec2Inventory  # noqa: E402
from annex.core.clock import parse_duration, to_iso, utcnow  # noqa: E402
from annex.core.config import HeartbeatSettings, IdleReapSettings  # noqa: E402
from annex.core.models import Annex, AnnexState, HeartbeatRequest, Instance, InstanceState, Market  # noqa: E402
from annex.failsafe.heartbeat import HeartbeatService  # noqa: E402
from annex.failsafe.idle_reap import run_idle_reap  # noqa: E402
from annex.failsafe.lease_check import run_lease_check  # noqa: E402
from annex.failsafe.rules import next_check, refresh_interval  # noqa: E402
from annex.store import AnnexStore  # noqa: E402
from annex.store._table import DUE_REAP, annex_pk, due_shard, instance_sk  # noqa: E402
from annex.store.bulk import load  # noqa: E402
from annex_local import moto_ec2  # noqa: E402
from annex_local.events import FakeContext, rest_event  # noqa: E402
from annex_local.pool import create_pool  # noqa: E402
from annex_local.streams import StreamReader, filter_patterns, lambda_event, passes  # noqa: E402
from annex_local.template import load_template, resolve_environment, table_create_kwargs  # noqa: E402
from bench_sweeps import speed_up_moto  # noqa: E402

os.environ.pop("MOTO_EC2_LOAD_DEFAULT_AMIS", None)  # bench_sweeps turns them off; the launch needs an image
from moto import mock_aws  # noqa: E402
from moto.dynamodb.models import dynamodb_backends  # noqa: E402

TABLE = "annex-bench"
STACK = "annex-bench"
ACCOUNT = "123456789012"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
INSTANCE_ROLE = "annex-bench-AnnexInstanceRole-BENCH"
PER_ANNEX = 10
OWNERS = 50
HB_SAMPLE = 100  # instances reporting in the heartbeat measurement (per-report cost does not depend on N)
HB_ROUNDS = 6  # 60 s apart: one whole cycle (a refresh every 3rd report, the due entry moved every 6th)
TARGET_INSTANCES = 100_000
TARGET_ANNEXES = 10_000
IDLE_REAP_SHARE_PER_HOUR = 0.01
MIN_OWNERS = 1_000  # 100,000 / MaxLiveInstancesPerOwner's default 100

# --- AWS's documented limits (each with its source) ----------------------------------------------
DDB_PARTITION = (
    "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/warm-throughput-scenarios.html"
)
DDB_ONDEMAND = "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/on-demand-capacity-mode-max-throughput.html"
APIGW = "https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html"
LAMBDA = "https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html"
EC2_THROTTLING = "https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html"
PARTITION_WCU, PARTITION_RCU, TABLE_ONDEMAND_UNITS = 1_000, 3_000, 40_000
APIGW_ACCOUNT_RPS = 10_000
LAMBDA_CONCURRENCY = 1_000
# (bucket maximum capacity, refill per second): request tokens per call, and resource tokens per instance.
EC2_REQUEST_BUCKETS = {
    "DescribeInstances": (100, 20),  # non-mutating (filtered and paginated, as the inventory calls it)
    "TerminateInstances": (100, 5),
    "RunInstances": (5, 2),
    "CreateTags": (100, 10),
}
EC2_RESOURCE_BUCKETS = {"RunInstances": (1_000, 2), "TerminateInstances": (1_000, 20)}
# AWS round trips are not measured here (moto answers in process): a projected duration is our code's
# measured time plus these assumed latencies per call (pessimistic for DynamoDB's single-digit ms; EC2 calls
# that launch or list a thousand instances take around a second).
ASSUMED_LATENCY_S = {"dynamodb": 0.010, "ec2": 1.0}
OTHER_LATENCY_S = 0.020


# --- item sizes and units --------------------------------------------------------------------------


def _value_size(value: dict[str, Any]) -> int:
    ((kind, v),) = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        digits = len(v.lstrip("-").replace(".", "").strip("0")) or 1
        return (digits + 1) // 2 + 1
    if kind == "B":
        return len(v) if isinstance(v, bytes) else len(v) * 3 // 4
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(_value_size({kind[0]: e}) for e in v)
    if kind == "L":
        return 3 + sum(_value_size(e) + 1 for e in v)
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_size(e) + 1 for k, e in v.items())
    raise ValueError(kind)


def item_size(item: dict[str, Any] | None) -> int:
    """DynamoDB's item size: attribute names plus values (numbers about one byte per two digits)."""
    return sum(len(k.encode()) + _value_size(v) for k, v in (item or {}).items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def read_units(size: int, consistent: bool) -> float:
    return max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5)


@dataclass(frozen=True)
class Index:
    name: str
    keys: tuple[str, ...]  # hash, range
    projection: str  # KEYS_ONLY or ALL

    def entry(self, item: dict[str, Any] | None) -> dict[str, Any] | None:
        """The index entry of a table item (None if the item is not in this sparse index)."""
        if item is None or any(k not in item for k in self.keys):
            return None
        if self.projection == "ALL":
            return item
        return {k: item[k] for k in ("pk", "sk", *self.keys)}


def table_indexes() -> list[Index]:
    spec = table_create_kwargs(TABLE)
    return [
        Index(
            g["IndexName"],
            tuple(k["AttributeName"] for k in g["KeySchema"]),
            g["Projection"]["ProjectionType"],
        )
        for g in spec.get("GlobalSecondaryIndexes", [])
    ]


# --- metering ----------------------------------------------------------------------------------------


@dataclass
class Usage:
    calls: Counter[str] = field(default_factory=Counter)  # "dynamodb:UpdateItem", "ec2:RunInstances"
    wcu: Counter[tuple[str, str]] = field(default_factory=Counter)  # (table | index, partition key)
    rcu: Counter[tuple[str, str]] = field(default_factory=Counter)
    ec2_instances: Counter[str] = field(default_factory=Counter)  # resource tokens per operation
    seconds: float = 0.0  # our code's own time: wall time less the time inside AWS calls and the meter's

    def add(self, other: Usage) -> None:
        self.calls.update(other.calls)
        self.wcu.update(other.wcu)
        self.rcu.update(other.rcu)
        self.ec2_instances.update(other.ec2_instances)
        self.seconds += other.seconds

    def scaled(self, factor: float) -> Usage:
        out = Usage(seconds=self.seconds * factor)
        for src, dst in (
            (self.calls, out.calls),
            (self.wcu, out.wcu),
            (self.rcu, out.rcu),
            (self.ec2_instances, out.ec2_instances),
        ):
            for k, v in src.items():
                dst[k] = v * factor
        return out

    def duration(self) -> float:
        """Projected run time: our code's measured time plus an assumed round trip per AWS call."""
        return self.seconds + sum(
            n * ASSUMED_LATENCY_S.get(key.split(":")[0], OTHER_LATENCY_S) for key, n in self.calls.items()
        )

    def minus(self, other: Usage) -> Usage:
        out = Usage(seconds=max(0.0, self.seconds - other.seconds))
        for a, b, dst in (
            (self.calls, other.calls, out.calls),
            (self.wcu, other.wcu, out.wcu),
            (self.rcu, other.rcu, out.rcu),
            (self.ec2_instances, other.ec2_instances, out.ec2_instances),
        ):
            for k in set(a) | set(b):
                dst[k] = a.get(k, 0) - b.get(k, 0)
        return out


_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}


class Meter:
    """botocore hooks that meter every call of the clients attached (see the module docstring)."""

    def __init__(self, indexes: list[Index]) -> None:
        self.indexes = indexes
        self.usage = Usage()
        self._pending: list[
            tuple[str, dict[str, Any], list[tuple[dict[str, Any], dict[str, Any] | None]]]
        ] = []

    def attach(self, client: Any) -> None:
        service = client.meta.service_model.service_name
        client.meta.events.register(f"before-parameter-build.{service}", self._before)
        client.meta.events.register(f"before-call.{service}", self._sent)
        client.meta.events.register(f"after-call.{service}", self._after)

    elsewhere = 0.0  # seconds inside AWS calls (moto) and inside the meter itself, since the last take

    def _sent(self, **_: Any) -> None:
        self._call_started = time.perf_counter()

    def take(self) -> Usage:
        taken, self.usage = self.usage, Usage()
        self.elsewhere = 0.0
        return taken

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, Usage]:
        """Run fn, metered; the usage's seconds are our code's (not moto's, not the meter's)."""
        self.take()
        started = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - started
        elsewhere = self.elsewhere
        used = self.take()
        used.seconds = max(0.0, wall - elsewhere)
        return out, used

    # moto's own backend: reads that are not metered
    @staticmethod
    def _stored(key: dict[str, Any]) -> dict[str, Any] | None:
        found = dynamodb_backends[ACCOUNT]["us-east-1"].get_item(TABLE, key)
        return found.to_json()["Attributes"] if found is not None else None

    def _write_targets(self, op: str, params: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
        """(key, transactional) of each item a write request touches."""

        def key_of(body: dict[str, Any]) -> dict[str, Any]:
            if "Key" in body:
                return body["Key"]
            return {k: body["Item"][k] for k in ("pk", "sk")}

        if op == "TransactWriteItems":
            return [
                (key_of(body), True)
                for entry in params["TransactItems"]
                for kind, body in entry.items()
                if kind != "ConditionCheck"
            ]
        if op == "BatchWriteItem":
            return [
                (key_of(next(iter(r.values()))), False)
                for reqs in params["RequestItems"].values()
                for r in reqs
            ]
        return [(key_of(params), False)]

    def _before(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        entered = time.perf_counter()
        service = model.service_model.service_name
        self.usage.calls[f"{service}:{model.name}"] += 1
        if service == "ec2" and model.name == "TerminateInstances":
            self.usage.ec2_instances[model.name] += len(params.get("InstanceIds", []))
        if service == "dynamodb" and model.name in _WRITES:
            touched = [(key, self._stored(key)) for key, _tx in self._write_targets(model.name, params)]
            self._pending.append((model.name, params, touched))
        self.elsewhere += time.perf_counter() - entered

    def _after(self, model: Any, parsed: dict[str, Any], **_: Any) -> None:
        entered = time.perf_counter()
        self.elsewhere += entered - self._call_started
        try:
            self._account(model, parsed)
        finally:
            self.elsewhere += time.perf_counter() - entered

    def _account(self, model: Any, parsed: dict[str, Any]) -> None:
        service = model.service_model.service_name
        if service == "ec2":
            if model.name == "RunInstances":
                self.usage.ec2_instances[model.name] += len(parsed.get("Instances", []))
            return
        if model.name in _WRITES:
            op, params, touched = self._pending.pop()
            failed = "Error" in parsed
            factor = 2 if op == "TransactWriteItems" else 1
            for key, old in touched:
                pk = key["pk"]["S"]
                if failed:
                    self.usage.wcu[("table", pk)] += factor
                    continue
                new = self._stored(key)
                self.usage.wcu[("table", pk)] += factor * write_units(max(item_size(old), item_size(new)))
                for index in self.indexes:
                    self._index_writes(index, old, new)
        elif model.name == "GetItem":
            params = getattr(self, "_last_params", {})
            item = parsed.get("Item")
            pk = params["Key"]["pk"]["S"]
            self.usage.rcu[("table", pk)] += read_units(item_size(item), bool(params.get("ConsistentRead")))
        elif model.name == "BatchGetItem":
            for table, items in parsed.get("Responses", {}).items():
                del table
                for item in items:
                    self.usage.rcu[("table", item["pk"]["S"])] += read_units(
                        item_size(item), self._consistent
                    )
        elif model.name == "Query":
            target, pk = self._query_key
            size = sum(item_size(i) for i in parsed.get("Items", []))
            self.usage.rcu[(target, pk)] += read_units(size, self._consistent)

    def _index_writes(self, index: Index, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        before, after = index.entry(old), index.entry(new)
        if before is None and after is None:
            return
        hash_key = index.keys[0]
        if before is not None and after is not None and all(before[k] == after[k] for k in index.keys):
            if before != after:  # a projected non-key attribute changed (only with ALL here)
                self.usage.wcu[(index.name, _s(after[hash_key]))] += write_units(item_size(after))
            return
        if before is not None:
            self.usage.wcu[(index.name, _s(before[hash_key]))] += write_units(item_size(before))
        if after is not None:
            self.usage.wcu[(index.name, _s(after[hash_key]))] += write_units(item_size(after))

    # request details the after-call hook needs (set by a second before hook: parameters as sent)
    def attach_reads(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.dynamodb.Query", self._query_params)
        client.meta.events.register("before-parameter-build.dynamodb.BatchGetItem", self._batch_params)
        client.meta.events.register("before-parameter-build.dynamodb.GetItem", self._get_params)

    def _query_params(self, params: dict[str, Any], **_: Any) -> None:
        target = params.get("IndexName", "table")
        values = params.get("ExpressionAttributeValues", {})
        hash_attr = "pk"
        for index in self.indexes:
            if index.name == target:
                hash_attr = index.keys[0]
        match = re.search(rf"(?:#\w+|{hash_attr})\s*=\s*(:\w+)", params["KeyConditionExpression"])
        self._query_key = (target, _s(values[match.group(1)]) if match else "?")
        self._consistent = bool(params.get("ConsistentRead", False))

    def _batch_params(self, params: dict[str, Any], **_: Any) -> None:
        self._consistent = all(bool(t.get("ConsistentRead", False)) for t in params["RequestItems"].values())

    def _get_params(self, params: dict[str, Any], **_: Any) -> None:
        self._last_params = params


def _s(value: dict[str, Any]) -> str:
    return str(next(iter(value.values())))


# --- the scenario at one N -------------------------------------------------------------------------


@dataclass
class Measured:
    n: int
    heartbeat: Usage  # per report
    index_moves: float  # share of reports that moved the instance's `due` entry
    lease_due: Usage  # one lease-check run with leases due
    lease_idle: Usage  # one with nothing due (fixed part + the orphan sweep over N running)
    leases_ended: int
    reap_due: Usage
    reap_idle: Usage
    reaped: int
    launch: Usage  # create + launch of one annex of 10
    extend: Usage  # one extension


def _orphan_segments() -> int:
    """The template's orphan-sweep segments: one run examines 1/segments of the running fleet."""
    variables = load_template()["Resources"]["LeaseCheckFunction"]["Properties"]["Environment"]["Variables"]
    return int(variables["ORPHAN_SEGMENTS"])


ORPHAN_SEGMENTS = _orphan_segments()


def annex_id(n: int) -> str:
    """The n-th seeded annex's id. Real ids are random; multiplying by an odd constant (a bijection mod
    2**64) spreads consecutive n over every ending, as random ids are spread over the orphan sweep's
    segments."""
    return f"ax-{n * 0x9E3779B97F4A7C15 % 2**64:016x}"


def _annex(n: int, now: datetime, *, lease_due: bool) -> Annex:
    return Annex(
        id=annex_id(n),
        name=f"bench-{n}",
        owner=f"arn:aws:iam::{ACCOUNT}:user/u{n % OWNERS}",
        state=AnnexState.RUNNING,
        count=PER_ANNEX,
        instance_types=["c7i.xlarge"],
        market=Market.ON_DEMAND,
        lease_expires_at=now - timedelta(seconds=30) if lease_due else now + timedelta(hours=3),
        idle_timeout_seconds=3600,
        created_at=now - timedelta(hours=1),
        updated_at=now - timedelta(hours=1),
        launched_count=PER_ANNEX,
    )


def _run_tagged(ec2: Any, n: int, lease: str, image: str, profile_arn: str) -> list[str]:
    """Instances as the launch function starts them: the stack's tags and its instance profile (the
    inventory sees nothing else)."""
    ids: list[str] = []
    while n > 0:
        batch = min(n, 2_500)
        resp = ec2.run_instances(
            IamInstanceProfile={"Arn": profile_arn},
            ImageId=image,
            MinCount=batch,
            MaxCount=batch,
            InstanceType="c7i.xlarge",
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": "annex:stack", "Value": STACK},
                        {"Key": "annex:lease-expires", "Value": lease},
                    ],
                }
            ],
        )
        ids += [i["InstanceId"] for i in resp["Instances"]]
        n -= batch
    return ids


def measure(n: int) -> Measured:
    annexes = n // PER_ANNEX
    lease_due = max(1, annexes // 20)  # 5% of the annexes
    silent = max(2, n // 50)  # 2% of the instances
    moto_ec2.install()  # EC2's iam-instance-profile.arn filter, which the inventory uses
    with mock_aws():
        speed_up_moto()
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ec2 = boto3.client("ec2", region_name="us-east-1")
        ddb.create_table(**table_create_kwargs(TABLE))
        pool = create_pool()
        image = pool.image_id
        now = utcnow()
        reap_env = resolve_environment(
            "IdleReapFunction",
            table_name=TABLE,
            stack_name=STACK,
            overrides={"AnnexInstanceProfile.Arn": pool.instance_profile_arn},
        )
        timing = IdleReapSettings.from_env(reap_env)
        hb_settings = HeartbeatSettings.from_env(
            resolve_environment(
                "HeartbeatFunction",
                table_name=TABLE,
                stack_name=STACK,
                overrides={"AnnexInstanceRole": INSTANCE_ROLE},
            )
        )

        # Seed: N instances running in EC2 and recorded, heard from 30 s ago; 5% of the annexes past their
        # lease; 2% of the instances silent (their silence deadline, the loss grace plus R after the stored
        # last-seen time, passed a minute ago).
        store = AnnexStore(ddb, TABLE)
        due_ids = _run_tagged(
            ec2, lease_due * PER_ANNEX, to_iso(now - timedelta(seconds=30)), image, pool.instance_profile_arn
        )
        other_ids = _run_tagged(
            ec2,
            (annexes - lease_due) * PER_ANNEX,
            to_iso(now + timedelta(hours=3)),
            image,
            pool.instance_profile_arn,
        )
        seeded: list[tuple[Annex, list[tuple[Instance, Any]]]] = []
        silent_left = silent
        for k in range(annexes):
            is_due = k < lease_due
            annex = _annex(k, now, lease_due=is_due)
            pool_ids, start = (due_ids, k) if is_due else (other_ids, k - lease_due)
            ids = pool_ids[start * PER_ANNEX : (start + 1) * PER_ANNEX]
            ec2.create_tags(Resources=ids, Tags=[{"Key": "annex:id", "Value": annex.id}])
            instances = []
            for j, iid in enumerate(ids):
                heard = now - timedelta(seconds=30)
                if not is_due and j == 0 and silent_left > 0:
                    heard = (
                        now - timing.heartbeat_loss_grace - refresh_interval(timing) - timedelta(minutes=1)
                    )
                    silent_left -= 1
                instance = Instance(
                    instance_id=iid,
                    annex_id=annex.id,
                    instance_type="c7i.xlarge",
                    zone="us-east-1a",
                    market=Market.ON_DEMAND,
                    state=InstanceState.RUNNING,
                    launched_at=now - timedelta(hours=1),
                    last_heartbeat_at=heard,
                    claimed_slots=4,
                    total_slots=4,
                )
                instances.append((instance, next_check(instance, annex.idle_timeout, timing)))
            seeded.append((annex, instances))
        load(store, seeded)
        reaped_expected = silent - silent_left

        meter = Meter(table_indexes())
        for client in (ddb, ec2):
            meter.attach(client)
        meter.attach_reads(ddb)
        inventory = Ec2Inventory(ec2, STACK, instance_profile_arn=pool.instance_profile_arn)

        # Heartbeats: a sample of busy, live instances over HB_ROUNDS rounds, 60 s apart.
        service = HeartbeatService(store, hb_settings)
        sample = [
            (annex, inst.instance_id)
            for annex, instances in seeded[lease_due:]
            for inst, _ in instances
            if inst.last_heartbeat_at == now - timedelta(seconds=30)
        ][:HB_SAMPLE]
        meter.take()
        hb = Usage()
        moves = 0
        for r in range(HB_ROUNDS):
            at = now + timedelta(seconds=60 * r)
            for annex, iid in sample:
                request = HeartbeatRequest(instance_id=iid, annex_id=annex.id, claimed_slots=4, total_slots=4)
                caller = f"arn:aws:sts::{ACCOUNT}:assumed-role/{INSTANCE_ROLE}/{iid}"
                _, took = meter.timed(lambda c=caller, r=request, t=at: service.report(c, r, now=t))
                moves += any(t == "due" for t, _ in took.wcu)
                hb.add(took)
        reports = len(sample) * HB_ROUNDS
        heartbeat = hb.scaled(1 / reports)

        # lease-check: with leases due, then with none (the orphan sweep looks at every running instance).
        timed = meter.timed
        lease, lease_due_usage = timed(
            lambda: run_lease_check(
                store, inventory, now=now, retention=timing.retention, orphan_segments=ORPHAN_SEGMENTS
            )
        )
        _, lease_idle = timed(
            lambda: run_lease_check(
                store, inventory, now=now, retention=timing.retention, orphan_segments=ORPHAN_SEGMENTS
            )
        )
        assert lease.ok, lease.failures
        ended = sum(lease.terminated.values()) // PER_ANNEX

        reap, reap_due_usage = timed(
            lambda: run_idle_reap(store, inventory, now=now, timing=timing, retention=timing.retention)
        )
        _, reap_idle = timed(
            lambda: run_idle_reap(store, inventory, now=now, timing=timing, retention=timing.retention)
        )
        assert reap.ok, reap.failures
        assert reap.terminated == {"silent": reaped_expected}, (reap.terminated, reaped_expected)

        launch, extend = _create_launch_extend(pool, meter)
        return Measured(
            n=n,
            heartbeat=heartbeat,
            index_moves=moves / reports,
            lease_due=lease_due_usage,
            lease_idle=lease_idle,
            leases_ended=ended,
            reap_due=reap_due_usage,
            reap_idle=reap_idle,
            reaped=reaped_expected,
            launch=launch,
            extend=extend,
        )


def _create_launch_extend(pool: Any, meter: Meter, annexes: int = 2) -> tuple[Usage, Usage]:
    """POST /annexes (10 instances) and the launch function on its stream record, then an extension: the
    functions' own handlers with their template environments."""
    # The seeded fleet is already past the template's default caps: both functions read them.
    caps = {"MAX_LIVE_INSTANCES_PER_OWNER": "100000", "MAX_LIVE_INSTANCES": "1000000"}
    request_env = resolve_environment(
        "RequestFunction",
        table_name=TABLE,
        stack_name=STACK,
        overrides={
            **caps,
            "AnnexInstanceProfile.Arn": pool.instance_profile_arn,
            "LeaseTimerQueue": "",  # 4 h leases arm no timer
        },
    )
    launch_env = resolve_environment(
        "LaunchFunction", table_name=TABLE, stack_name=STACK, overrides={**pool.launch_overrides(), **caps}
    )
    os.environ.update({**request_env, **launch_env, "POWERTOOLS_LOG_LEVEL": "ERROR"})
    boto3.client("events", region_name="us-east-1").create_event_bus(Name=request_env["EVENT_BUS_NAME"])
    request_app = importlib.import_module("functions.request.app")
    launch_app = importlib.import_module("functions.launch.app")
    for module in (request_app, launch_app):
        for name in ("settings", "service", "launcher"):
            if hasattr(getattr(module, name, None), "cache_clear"):
                getattr(module, name).cache_clear()
    clients.client.cache_clear()
    clients.ec2_launch.cache_clear()
    for client in (clients.dynamodb(), clients.ec2(), clients.ec2_launch()):
        meter.attach(client)
    meter.attach_reads(clients.dynamodb())
    reader = StreamReader(TABLE)
    reader.poll()  # skip the seeding
    patterns = filter_patterns("LaunchFunction")
    launch_total, extend_total = Usage(), Usage()
    for k in range(annexes):
        body = {"name": f"churn-{k}", "count": PER_ANNEX, "lease": "4h"}

        def create_and_launch(body: dict[str, Any] = body) -> str:
            with contextlib.redirect_stdout(io.StringIO()):
                resp = request_app.handler(
                    rest_event("POST", "/annexes", caller_arn=ALICE, body=body), FakeContext("request")
                )
                assert resp["statusCode"] == 201, resp
                records = [r for r in reader.poll() if passes(patterns, r)]
                out = launch_app.handler(lambda_event(records), FakeContext("launch"))
                assert out == {"batchItemFailures": []}, out
            return str(json.loads(resp["body"])["id"])

        annex_id, used = meter.timed(create_and_launch)
        launch_total.add(used)

        def extend(annex_id: str = annex_id) -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                event = rest_event("POST", f"/annexes/{annex_id}/extend", caller_arn=ALICE, body={"by": "1h"})
                resp = request_app.handler(event, FakeContext("request"))
            assert resp["statusCode"] == 200, resp

        _, used = meter.timed(extend)
        extend_total.add(used)
        reader.poll()
    return launch_total.scaled(1 / annexes), extend_total.scaled(1 / annexes)


# --- projection ----------------------------------------------------------------------------------------


def key_class(target: str, key: str) -> str:
    if target == "due":
        return "due shard" if "#" in key else "due (unsharded)"
    if target == "all-annexes":
        return "all annexes (one key)"
    if target == "by-owner":
        return "an owner"
    if key.startswith("ANNEX#"):
        return "an annex"
    if key.startswith("OWNER#"):
        return "an owner"
    return key  # STACK, SWEEP#..., PRICE#...: single keys


def hottest_shard_share(n: int = TARGET_INSTANCES) -> float:
    """The largest share of n instance keys that one `due` shard holds (the store's own hash)."""
    shards = Counter(
        due_shard(DUE_REAP, annex_pk(annex_id(k // PER_ANNEX)), instance_sk(f"i-{k:017x}")) for k in range(n)
    )
    return max(shards.values()) / n


def spread(cls: str, shard_share: float) -> float:
    """How many partition keys share a class's load evenly (1 / the hottest key's share)."""
    return {
        "due shard": 1 / shard_share,
        "an annex": TARGET_ANNEXES,
        "an owner": MIN_OWNERS,
    }.get(cls, 1.0)


@dataclass
class Projection:
    rates: dict[str, float]  # per second
    per_op: dict[str, Usage]
    lease_run: Usage
    reap_run: Usage


def project(runs: list[Measured], lifetime: timedelta) -> Projection:
    big, small = runs[-1], runs[0]
    annex_rate = TARGET_ANNEXES / lifetime.total_seconds()  # annexes started (and ended) per second
    due_leases_per_run = annex_rate * 60
    reaped_per_run = TARGET_INSTANCES * IDLE_REAP_SHARE_PER_HOUR / 60
    # Per due item: the difference between the run with due work and the one without, at the largest N.
    per_lease = big.lease_due.minus(big.lease_idle).scaled(1 / big.leases_ended)
    per_reaped = big.reap_due.minus(big.reap_idle).scaled(1 / big.reaped)
    # What grows with the running fleet (the orphan sweep): the slope of the idle run over N.
    slope = big.lease_idle.minus(small.lease_idle).scaled(1 / (big.n - small.n))
    fixed = small.lease_idle.minus(slope.scaled(small.n))
    lease_run = Usage()
    lease_run.add(fixed)
    lease_run.add(slope.scaled(TARGET_INSTANCES))
    lease_run.add(per_lease.scaled(due_leases_per_run))
    reap_slope = big.reap_idle.minus(small.reap_idle).scaled(1 / (big.n - small.n))
    reap_run = Usage()
    reap_run.add(small.reap_idle.minus(reap_slope.scaled(small.n)))
    reap_run.add(reap_slope.scaled(TARGET_INSTANCES))
    reap_run.add(per_reaped.scaled(reaped_per_run))
    for usage in (lease_run, reap_run):  # differences of noisy timings can dip below zero
        usage.seconds = max(usage.seconds, 0.0)
    # moto answers DescribeInstances in one page per reservation; EC2 pages at most 1,000 instances (the
    # inventory asks for 1,000 a page), so the orphan sweep's listing is one call per 1,000 running there.
    measured_pages = (
        fixed.calls.get("ec2:DescribeInstances", 0)
        + slope.calls.get("ec2:DescribeInstances", 0) * TARGET_INSTANCES
    )
    examined = TARGET_INSTANCES / ORPHAN_SEGMENTS  # one segment of the fleet a run
    lease_run.calls["ec2:DescribeInstances"] += max(0.0, math.ceil(examined / 1000) - measured_pages)
    rates = {
        "heartbeat": TARGET_INSTANCES / 60,
        "lease-check run": 1 / 60,
        "idle-reap run": 1 / 60,
        "create+launch": annex_rate,
        "extend": annex_rate,
    }
    per_op = {
        "heartbeat": big.heartbeat,
        "lease-check run": lease_run,
        "idle-reap run": reap_run,
        "create+launch": big.launch,
        "extend": big.extend,
    }
    return Projection(rates=rates, per_op=per_op, lease_run=lease_run, reap_run=reap_run)


def template_limits() -> dict[str, Any]:
    template = load_template()
    resources = template["Resources"]
    throttle: tuple[str, float] | None = None
    for logical_id, resource in resources.items():
        if "Heartbeat" in logical_id and resource["Type"] in (
            "AWS::Serverless::Api",
            "AWS::Serverless::HttpApi",
        ):
            found = _find_key(resource.get("Properties", {}), "ThrottlingRateLimit")
            if found is not None:
                throttle = (logical_id, float(found))
    timeouts = {}
    reserved = {}
    default_timeout = template.get("Globals", {}).get("Function", {}).get("Timeout", 3)
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::Serverless::Function":
            props = resource["Properties"]
            timeouts[logical_id] = float(props.get("Timeout", default_timeout))
            if "ReservedConcurrentExecutions" in props:
                reserved[logical_id] = int(props["ReservedConcurrentExecutions"])
    per_annex = int(template["Parameters"]["MaxInstancesPerAnnex"]["Default"])
    return {"throttle": throttle, "timeouts": timeouts, "reserved": reserved, "max_per_annex": per_annex}


def _find_key(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for value in node.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    if isinstance(node, list):
        for value in node:
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


@dataclass
class Row:
    limit: str
    source: str
    load: float
    value: float
    unit: str

    @property
    def headroom(self) -> float:
        return self.value / self.load if self.load > 0 else math.inf


def rows(p: Projection, limits: dict[str, Any], shard_share: float) -> list[Row]:
    out: list[Row] = []
    # DynamoDB: per target (table, each index), total and hottest key.
    targets = ["table", *(i.name for i in table_indexes())]
    for unit_name, per_key_limit, attr in (("WCU", PARTITION_WCU, "wcu"), ("RCU", PARTITION_RCU, "rcu")):
        for target in targets:
            per_class: dict[str, float] = defaultdict(float)
            total = 0.0
            for op, rate in p.rates.items():
                for (t, key), units in getattr(p.per_op[op], attr).items():
                    if t != target:
                        continue
                    per_class[key_class(t, key)] += rate * units
                    total += rate * units
            if not per_class:
                continue
            hot_cls, hot = max(
                ((cls, load / spread(cls, shard_share)) for cls, load in per_class.items()),
                key=lambda x: x[1],
            )
            out.append(
                Row(
                    f"DynamoDB {target} hottest key {unit_name}/s ({hot_cls})",
                    DDB_PARTITION,
                    hot,
                    per_key_limit,
                    f"{unit_name}/s",
                )
            )
            if attr == "wcu":
                out.append(
                    Row(
                        f"DynamoDB {target} on-demand WRU/s",
                        DDB_ONDEMAND,
                        total,
                        TABLE_ONDEMAND_UNITS,
                        "WRU/s",
                    )
                )
    # The largest annex the template allows: its own partition takes its instances' heartbeats.
    hb = p.per_op["heartbeat"]
    per_report = sum(u for (t, k), u in hb.wcu.items() if t == "table" and k.startswith("ANNEX#"))
    biggest = limits["max_per_annex"]
    out.append(
        Row(
            f"DynamoDB table one annex of {biggest} (MaxInstancesPerAnnex) WCU/s",
            DDB_PARTITION,
            biggest / 60 * per_report,
            PARTITION_WCU,
            "WCU/s",
        )
    )
    # API Gateway
    api_rps = p.rates["heartbeat"] + 2 * p.rates["extend"] + p.rates["create+launch"]
    out.append(Row("API Gateway account throttle, requests/s", APIGW, api_rps, APIGW_ACCOUNT_RPS, "rps"))
    if limits["throttle"] is not None:
        api_id, rate = limits["throttle"]
        out.append(
            Row(
                f"{api_id} configured throttle (template.yaml)",
                "template.yaml",
                p.rates["heartbeat"],
                rate,
                "rps",
            )
        )
    # Lambda
    concurrency = {op: p.rates[op] * p.per_op[op].duration() for op in p.rates}
    out.append(
        Row("Lambda account concurrency", LAMBDA, sum(concurrency.values()), LAMBDA_CONCURRENCY, "execs")
    )
    sweeps = {"LeaseCheckFunction": p.lease_run, "IdleReapFunction": p.reap_run}
    for fn, run in sweeps.items():
        if fn in limits["reserved"]:
            out.append(
                Row(
                    f"{fn} reserved concurrency", LAMBDA, run.duration() / 60, limits["reserved"][fn], "execs"
                )
            )
        out.append(
            Row(
                f"{fn} timeout vs projected run time",
                "template.yaml",
                run.duration(),
                limits["timeouts"][fn],
                "s",
            )
        )
    out.append(
        Row(
            "HeartbeatFunction timeout vs one report",
            "template.yaml",
            p.per_op["heartbeat"].duration(),
            limits["timeouts"]["HeartbeatFunction"],
            "s",
        )
    )
    # EC2 request buckets (sustained: the refill rate) and resource buckets.
    for op, (_bucket, refill) in EC2_REQUEST_BUCKETS.items():
        calls = sum(rate * p.per_op[o].calls.get(f"ec2:{op}", 0) for o, rate in p.rates.items())
        out.append(Row(f"EC2 {op} request bucket refill", EC2_THROTTLING, calls, refill, "calls/s"))
    for op, (_bucket, refill) in EC2_RESOURCE_BUCKETS.items():
        instances = sum(rate * p.per_op[o].ec2_instances.get(op, 0) for o, rate in p.rates.items())
        out.append(Row(f"EC2 {op} resource bucket refill", EC2_THROTTLING, instances, refill, "instances/s"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifetime", default="4h", help="mean annex lifetime (default 4h, the DefaultLease)")
    parser.add_argument("--sizes", default="100,500,2000", help="instance counts to run")
    args = parser.parse_args()
    lifetime = parse_duration(args.lifetime)
    sizes = [int(s) for s in args.sizes.split(",")]
    began = time.perf_counter()
    print(__doc__.split("\n\n")[0].replace("\n", " "))
    runs = []
    for n in sizes:
        started = time.perf_counter()
        m = measure(n)
        runs.append(m)
        print(
            f"\nN = {n:,} instances ({n // PER_ANNEX:,} annexes), measured in {time.perf_counter() - started:.0f} s"
        )
        print(
            f"  {'operation':<34}{'DDB calls':>10}{'EC2 calls':>10}{'table WCU':>10}{'due WCU':>9}"
            f"{'table RCU':>10}{'due RCU':>9}{'code ms':>9}"
        )
        for label, usage in (
            ("heartbeat (per report)", m.heartbeat),
            (f"lease-check, {m.leases_ended} leases due", m.lease_due),
            ("lease-check, nothing due", m.lease_idle),
            (f"idle-reap, {m.reaped} silent", m.reap_due),
            ("idle-reap, nothing due", m.reap_idle),
            ("create + launch, annex of 10", m.launch),
            ("extend", m.extend),
        ):
            ddb_calls = sum(v for k, v in usage.calls.items() if k.startswith("dynamodb:"))
            ec2_calls = sum(v for k, v in usage.calls.items() if k.startswith("ec2:"))
            print(
                f"  {label:<34}{ddb_calls:>10.1f}{ec2_calls:>10.1f}"
                f"{sum(u for (t, _), u in usage.wcu.items() if t == 'table'):>10.1f}"
                f"{sum(u for (t, _), u in usage.wcu.items() if t == 'due'):>9.2f}"
                f"{sum(u for (t, _), u in usage.rcu.items() if t == 'table'):>10.1f}"
                f"{sum(u for (t, _), u in usage.rcu.items() if t == 'due'):>9.1f}"
                f"{usage.seconds * 1000:>9.1f}"
            )
        print(
            f"  heartbeats that moved their `due` entry: {m.index_moves:.0%} (over {HB_ROUNDS} rounds, 60 s apart)"
        )
    big = runs[-1]
    print(
        f"\nPartition keys written and read per operation at N = {big.n:,} (units per operation, by key class)"
    )
    for label, usage in (
        ("heartbeat", big.heartbeat),
        ("lease-check, per run with leases due", big.lease_due),
        ("idle-reap, per run with instances due", big.reap_due),
        ("create + launch", big.launch),
        ("extend", big.extend),
    ):
        for attr, unit in (("wcu", "WCU"), ("rcu", "RCU")):
            per: dict[tuple[str, str], float] = defaultdict(float)
            keys: dict[tuple[str, str], set[str]] = defaultdict(set)
            for (target, key), units in getattr(usage, attr).items():
                per[(target, key_class(target, key))] += units
                keys[(target, key_class(target, key))].add(key)
            text = "; ".join(
                f"{t} {c} {u:.2f} over {len(keys[(t, c)])} key{'s' * (len(keys[(t, c)]) != 1)}"
                for (t, c), u in sorted(per.items(), key=lambda kv: -kv[1])
            )
            print(f"  {label + ' ' + unit + ':':<46} {text}")
    share = hottest_shard_share()
    limits = template_limits()
    p = project(runs, lifetime)
    print(
        f"\nProjection: {TARGET_INSTANCES:,} instances / {TARGET_ANNEXES:,} annexes, heartbeats every 60 s, sweeps "
        f"every minute, annexes living {args.lifetime} (each extended once: {p.rates['create+launch']:.2f} "
        f"launches and extends/s), {IDLE_REAP_SHARE_PER_HOUR:.0%}/h of instances idle-reaped; the hottest due "
        f"shard holds {share:.2%} of 100,000 instance keys. Projected run times (our code's measured time plus "
        f"{ASSUMED_LATENCY_S['dynamodb'] * 1000:.0f} ms per DynamoDB and {ASSUMED_LATENCY_S['ec2']:.1f} s per EC2 "
        f"call, assumed): lease-check {p.lease_run.duration():.1f} s ({p.lease_run.seconds:.1f} s code, "
        f"{sum(p.lease_run.calls.values()):,.0f} calls), idle-reap {p.reap_run.duration():.1f} s "
        f"({p.reap_run.seconds:.1f} s code, {sum(p.reap_run.calls.values()):,.0f} calls; the orphan sweep "
        f"counted at EC2's 1,000 instances per DescribeInstances page), heartbeat "
        f"{p.per_op['heartbeat'].duration() * 1000:.0f} ms"
    )
    table = rows(p, limits, share)
    sources = list(dict.fromkeys(r.source for r in table))
    width = max(len(r.limit) for r in table)
    print(f"\n{'limit':<{width}} | source | {'projected load':>22} | {'limit value':>22} | headroom")
    for r in table:
        print(
            f"{r.limit:<{width}} | [{sources.index(r.source) + 1}]    | {r.load:>10,.2f} {r.unit:<11} | "
            f"{r.value:>10,.0f} {r.unit:<11} | {r.headroom:>7.1f}x"
        )
    for k, source in enumerate(sources, 1):
        print(f"  [{k}] {source}")
    launches_per_instance_s = p.rates["create+launch"] * PER_ANNEX
    _bucket, refill = EC2_RESOURCE_BUCKETS["RunInstances"]
    needed = lifetime * (launches_per_instance_s / (refill / 2))
    print(
        f"\nRunInstances' resource bucket refills {refill} instances/s per account and Region: 2x headroom at "
        f"{TARGET_INSTANCES:,} instances needs a mean instance lifetime of at least "
        f"{needed.total_seconds() / 3600:.1f} h (or a raised EC2 limit); see docs/scale.md."
    )
    tightest = min(table, key=lambda r: r.headroom)
    print(f"\nbench time {time.perf_counter() - began:.0f} s")
    print(f"headroom at {TARGET_INSTANCES} instances: {tightest.headroom:.1f}x (tightest: {tightest.limit})")


if __name__ == "__main__":
    main()
