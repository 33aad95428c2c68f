"""The fail-safe sweeps at scale, under moto: what one run of each sweep reads and calls, and proof that
the cost follows what is due, not the size of the table.

Scenario A: 1,000 live annexes with 10 instances each (10,000 instances, running in moto EC2), 10% due:
100 annexes whose lease has passed (their 1,000 instances) and 1,000 other instances due for idle-reap
(500 idle past their timeout, 500 silent). The other 9,000 instances are busy and heartbeating.
Scenario B: A plus ten times A's not-due population in the table (9,000 more live annexes, 90,000 more
busy instance records, not due). The due work is the same.

Printed per sweep: items due, instances terminated, DynamoDB items read (the store's counter), DynamoDB
requests and EC2 calls (counted with botocore event hooks), wall time. The lease-check's orphan sweep is
shown on its own line: by design it looks at every running instance of the stack (one DescribeInstances
page per 1,000 and one annex record per annex with running instances), so it follows the running fleet,
which is the same 10,000 instances in EC2 in both scenarios (B's extra instances are records only).

Two emulator costs are taken out so the wall time reflects our calls rather than moto (the call and item
counts are unaffected): moto looks up an instance's tags by scanning every tag of every resource, and
snapshots the whole table before every TransactWriteItems (for rollback). The bench gives moto an
indexed tag lookup and a snapshot of the touched items only. moto's index queries still scan the table,
so B's wall times include that emulator cost.

Run: make bench   (or: .venv/bin/python bench/bench_sweeps.py)
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the annex package and annex_local, as the tests import them
sys.path.insert(0, str(ROOT / "layers" / "annex"))
os.environ.update(
    AWS_ACCESS_KEY_ID="bench",
    AWS_SECRET_ACCESS_KEY="bench",
    AWS_DEFAULT_REGION="us-east-1",
    MOTO_EC2_LOAD_DEFAULT_AMIS="false",
)

import boto3  # noqa: E402
from annex.aws.inventory import Ec2Inventory  # noqa: E402
from annex.core.clock import to_iso, utcnow  # noqa: E402
from annex.core.config import IdleReapSettings  # noqa: E402
from annex.core.models import Annex, AnnexState, Instance, InstanceState, Market  # noqa: E402
from annex.failsafe.idle_reap import run_idle_reap  # noqa: E402
from annex.failsafe.lease_check import run_lease_check, sweep_orphans  # noqa: E402
from annex.failsafe.rules import next_check, refresh_interval  # noqa: E402
from annex.failsafe.sweeps import SweepReport  # noqa: E402
from annex.store import AnnexStore  # noqa: E402
from annex.store.bulk import load  # noqa: E402
from annex_local import moto_ec2  # noqa: E402
from annex_local.template import resolve_environment, table_create_kwargs  # noqa: E402
from moto import mock_aws  # noqa: E402
from moto.dynamodb.models import DynamoDBBackend  # noqa: E402
from moto.ec2.models.core import TaggedEC2Resource  # noqa: E402

TABLE = "annex-bench"
STACK = "annex-bench"
PROFILE_ARN = "arn:aws:iam::123456789012:instance-profile/annex-bench"
ANNEXES = 1_000
PER_ANNEX = 10
LEASE_DUE = 100  # annexes (10%)
REAP_DUE = 1_000  # instances (10%), half idle, half silent
GROWTH = 10
OWNERS = 50
SLOTS = 4
SETTINGS = IdleReapSettings.from_env(
    resolve_environment(
        "IdleReapFunction",
        table_name=TABLE,
        stack_name=STACK,
        overrides={"AnnexInstanceProfile.Arn": PROFILE_ARN},
    )
)
IDLE_TIMEOUT = timedelta(minutes=20)


# --- emulator speed-ups (see the module docstring) ----------------------------------------------


def _indexed_tags(self: Any) -> list[dict[str, str]]:
    tags = self.ec2_backend.tags.get(self.id, {}) if self.id else {}
    return [
        {"resource_id": self.id, "key": k, "value": v, "resource_type": "instance"} for k, v in tags.items()
    ]


_moto_transact = DynamoDBBackend.transact_write_items


def _transact_with_item_snapshots(self: Any, transact_items: list[dict[str, Any]]) -> None:
    """moto's own transaction, rolled back from a snapshot of the items it touches instead of the table."""
    touched = []
    for entry in transact_items:
        ((_op_type, op),) = entry.items()
        table = self.get_table(op["TableName"])
        key = op.get("Key") or {
            k: op["Item"][k] for k in (table.hash_key_attr, table.range_key_attr) if k is not None
        }
        current = self.get_item(op["TableName"], key)
        touched.append(
            (op["TableName"], key, copy.deepcopy(current.to_json()["Attributes"]) if current else None)
        )
    real_deepcopy = copy.deepcopy
    copy.deepcopy = lambda table, *args: table  # moto's whole-table snapshot becomes a no-op
    try:
        _moto_transact(self, transact_items)
    except Exception:
        for table_name, key, item in touched:
            if item is None:
                self.delete_item(table_name, key)
            else:
                self.put_item(table_name, item)
        raise
    finally:
        copy.deepcopy = real_deepcopy


def speed_up_moto() -> None:
    TaggedEC2Resource.get_tags = _indexed_tags  # type: ignore[method-assign]
    DynamoDBBackend.transact_write_items = _transact_with_item_snapshots  # type: ignore[method-assign]


# --- counting -----------------------------------------------------------------------------------


class CallCounter:
    """Every AWS API call the sweeps make, by service and operation (botocore event hooks)."""

    def __init__(self, *clients: Any) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        for client in clients:
            client.meta.events.register("before-call", self._count)

    def _count(self, model: Any, **_kwargs: Any) -> None:
        self.calls[(model.service_model.service_name, model.name)] += 1

    def take(self) -> Counter[tuple[str, str]]:
        taken, self.calls = self.calls, Counter()
        return taken


# --- seeding ------------------------------------------------------------------------------------


def _annex(n: int, now: Any, *, lease_due: bool) -> Annex:
    return Annex(
        id=f"ax-{n:016x}",
        name=f"bench-{n}",
        owner=f"arn:aws:iam::123456789012:user/u{n % OWNERS}",
        state=AnnexState.RUNNING,
        count=PER_ANNEX,
        instance_types=["c7i.xlarge"],
        market=Market.ON_DEMAND,
        lease_expires_at=now - timedelta(seconds=30) if lease_due else now + timedelta(hours=3),
        idle_timeout_seconds=int(IDLE_TIMEOUT.total_seconds()),
        created_at=now - timedelta(hours=1),
        updated_at=now - timedelta(hours=1),
        launched_count=PER_ANNEX,
    )


def _instance(annex: Annex, instance_id: str, now: Any, kind: str) -> Instance:
    heard = now - timedelta(seconds=30)
    fields: dict[str, Any] = {"last_heartbeat_at": heard, "claimed_slots": SLOTS, "total_slots": SLOTS}
    if kind == "idle":  # idle for 25 minutes, timeout 20
        fields.update(claimed_slots=0, idle_since=now - timedelta(minutes=25))
    elif kind == "silent":  # last heard a minute past the silence bound (grace 5m + refresh R 2.5m)
        silent_for = SETTINGS.heartbeat_loss_grace + refresh_interval(SETTINGS) + timedelta(minutes=1)
        fields.update(last_heartbeat_at=now - silent_for, claimed_slots=2)
    return Instance(
        instance_id=instance_id,
        annex_id=annex.id,
        instance_type="c7i.xlarge",
        zone="us-east-1a",
        market=Market.ON_DEMAND,
        state=InstanceState.RUNNING,
        launched_at=now - timedelta(hours=1),
        **fields,
    )


def _run(ec2: Any, n: int, lease: str) -> list[str]:
    """A few large RunInstances calls, launched with the stack's instance profile and tagged by the stack
    with the lease."""
    ids: list[str] = []
    while n > 0:
        batch = min(n, 2_500)
        resp = ec2.run_instances(
            IamInstanceProfile={"Arn": PROFILE_ARN},
            ImageId="ami-0123456789abcdef0",
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


def seed(store: AnnexStore, ddb: Any, ec2: Any, now: Any, *, extra_annexes: int) -> dict[str, int]:
    annexes: list[tuple[Annex, list[tuple[Instance, Any]]]] = []
    due_ids = _run(ec2, LEASE_DUE * PER_ANNEX, to_iso(now - timedelta(seconds=30)))
    other_ids = _run(ec2, (ANNEXES - LEASE_DUE) * PER_ANNEX, to_iso(now + timedelta(hours=3)))
    reap_due = 0
    for n in range(ANNEXES + extra_annexes):
        lease_due = n < LEASE_DUE
        annex = _annex(n, now, lease_due=lease_due)
        if n < ANNEXES:
            pool, start = (due_ids, n) if lease_due else (other_ids, n - LEASE_DUE)
            ids = pool[start * PER_ANNEX : (start + 1) * PER_ANNEX]
            ec2.create_tags(Resources=ids, Tags=[{"Key": "annex:id", "Value": annex.id}])
        else:  # the tenfold not-due population: records only
            ids = [f"i-{n * PER_ANNEX + k:017x}" for k in range(PER_ANNEX)]
        instances = []
        for k, instance_id in enumerate(ids):
            kind = "busy"
            if (
                not lease_due
                and n < ANNEXES
                and reap_due < REAP_DUE
                and k < 2
                and (k == 0 or n < 2 * LEASE_DUE)
            ):
                kind = "idle" if reap_due % 2 == 0 else "silent"
                reap_due += 1
            instance = _instance(annex, instance_id, now, kind)
            instances.append((instance, next_check(instance, IDLE_TIMEOUT, SETTINGS)))
        annexes.append((annex, instances))
    written = load(store, annexes)
    assert reap_due == REAP_DUE
    return {"table items": written, "ec2 instances": len(due_ids) + len(other_ids)}


# --- one scenario -------------------------------------------------------------------------------


def run(extra_annexes: int) -> dict[str, Any]:
    moto_ec2.install()  # EC2's iam-instance-profile.arn filter, which the inventory uses
    with mock_aws():
        speed_up_moto()
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ec2 = boto3.client("ec2", region_name="us-east-1")
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_instance_profile(InstanceProfileName=PROFILE_ARN.rsplit("/", 1)[1])
        ddb.create_table(**table_create_kwargs(TABLE))
        store = AnnexStore(ddb, TABLE)
        instances = Ec2Inventory(ec2, STACK, instance_profile_arn=PROFILE_ARN)
        now = utcnow()
        started = time.perf_counter()
        population = seed(store, ddb, ec2, now, extra_annexes=extra_annexes)
        population["seed s"] = round(time.perf_counter() - started)
        counter = CallCounter(ddb, ec2)

        lease = run_lease_check(store, instances, now=now, retention=SETTINGS.retention)
        lease_calls = counter.take()
        reap = run_idle_reap(store, instances, now=now, timing=SETTINGS, retention=SETTINGS.retention)
        reap_calls = counter.take()

        started = time.perf_counter()
        for n in range(LEASE_DUE, LEASE_DUE + 5):
            store.list_instances(f"ax-{n:016x}")
        population["moto query ms"] = round((time.perf_counter() - started) / 5 * 1000)
        segments = segmented_orphan_sweeps(store, instances, now) if extra_annexes == 0 else None
        for report in (lease, reap):
            assert report.ok, report.failures
        assert lease.terminated == {"lease-expired": LEASE_DUE * PER_ANNEX}, lease.terminated
        assert reap.terminated == {"idle": REAP_DUE // 2, "silent": REAP_DUE // 2}, reap.terminated
        return {
            "population": population,
            "lease": (lease, lease_calls),
            "reap": (reap, reap_calls),
            "segments": segments,
        }


ORPHAN_SEGMENTS = 12  # the template's


def segmented_orphan_sweeps(store: AnnexStore, ec2: Ec2Inventory, now: Any) -> dict[str, Any]:
    """The orphan sweep as the template runs it: one of 12 segments per minute, for one rotation."""
    runs = []
    for minute in range(ORPHAN_SEGMENTS):
        items, calls, started = store.items_read, ec2.calls, time.perf_counter()
        result = sweep_orphans(
            store,
            ec2,
            now=now + timedelta(minutes=minute),
            retention=SETTINGS.retention,
            segments=ORPHAN_SEGMENTS,
        )
        runs.append(
            (result.running, store.items_read - items, ec2.calls - calls, time.perf_counter() - started)
        )
    return {"runs": runs, "running": len(list(ec2.live_instances()))}


def _requests(calls: Counter[tuple[str, str]], service: str) -> int:
    return sum(n for (s, _op), n in calls.items() if s == service)


def _by_operation(calls: Counter[tuple[str, str]]) -> str:
    return ", ".join(
        f"{op} {n:,}" for (_s, op), n in sorted(calls.items(), key=lambda kv: (kv[0][0], -kv[1]))
    )


def rows(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    lease: SweepReport
    lease, lease_calls = result["lease"]
    reap, reap_calls = result["reap"]
    d = lease.details
    orphan_items, orphan_ec2, orphan_s = (
        d["orphan_sweep_items_read"],
        d["orphan_sweep_ec2_calls"],
        d["orphan_sweep_ms"] / 1000,
    )
    return {
        "lease-check: due leases": {
            "due": lease.due,
            "terminated": sum(lease.terminated.values()),
            "items read": lease.items_read - orphan_items,
            "ec2 calls": lease.ec2_calls - orphan_ec2,
            "wall s": lease.duration_ms / 1000 - orphan_s,
        },
        "lease-check: orphan sweep": {
            "due": d["orphan_sweep_running"],
            "terminated": 0,
            "items read": orphan_items,
            "ec2 calls": orphan_ec2,
            "wall s": orphan_s,
        },
        "lease-check: whole run": {
            "due": lease.due,
            "terminated": sum(lease.terminated.values()),
            "items read": lease.items_read,
            "ec2 calls": lease.ec2_calls,
            "ddb requests": _requests(lease_calls, "dynamodb"),
            "wall s": lease.duration_ms / 1000,
        },
        "idle-reap": {
            "due": reap.due,
            "terminated": sum(reap.terminated.values()),
            "items read": reap.items_read,
            "ec2 calls": reap.ec2_calls,
            "ddb requests": _requests(reap_calls, "dynamodb"),
            "wall s": reap.duration_ms / 1000,
        },
    }


def main() -> None:
    print(__doc__.split("\n\n")[0].replace("\n", " "))
    began = time.perf_counter()
    results = {}
    for label, extra in (("A", 0), ("B", (ANNEXES - LEASE_DUE) * (GROWTH - 1))):
        started = time.perf_counter()
        results[label] = result = run(extra)
        pop, live = result["population"], ANNEXES + extra
        print(
            f"\nscenario {label}: {live:,} live annexes, {live * PER_ANNEX:,} instance "
            f"records ({pop['table items']:,} table items), {pop['ec2 instances']:,} instances in EC2; "
            f"due: {LEASE_DUE} leases, {REAP_DUE:,} instances"
        )
        print(
            f"  (seeded in {pop['seed s']} s; scenario {time.perf_counter() - started:.0f} s; moto answers a "
            f"Query of one annex's partition in {pop['moto query ms']:,} ms at this table size)"
        )
        header = ("sweep", "due", "terminated", "items read", "EC2 calls", "DDB requests", "wall s")
        print("  {:<26} {:>6} {:>10} {:>10} {:>9} {:>12} {:>7}".format(*header))
        for name, r in rows(result).items():
            requests = f"{r['ddb requests']:,}" if "ddb requests" in r else ""
            print(
                f"  {name:<26} {r['due']:>6,} {r['terminated']:>10,} {r['items read']:>10,} "
                f"{r['ec2 calls']:>9,} {requests:>12} {r['wall s']:>7.1f}"
            )
        for sweep in ("lease", "reap"):
            _report, calls = result[sweep]
            print(f"  {sweep + ' calls:':<12} {_by_operation(calls)}")
    seg = results["A"]["segments"]
    runs = seg["runs"]
    print(
        f"\norphan sweep in {ORPHAN_SEGMENTS} segments (scenario A, one rotation): per run at most "
        f"{max(r[0] for r in runs):,} instances examined, {max(r[1] for r in runs):,} items read, "
        f"{max(r[2] for r in runs)} EC2 calls, {max(r[3] for r in runs):.1f} s; the rotation examined "
        f"{sum(r[0] for r in runs):,} of {seg['running']:,} running instances"
    )
    a, b = rows(results["A"]), rows(results["B"])
    growth = results["B"]["population"]["table items"] / results["A"]["population"]["table items"]
    print(f"\nB / A: the table is x{growth:.1f} larger; the due work is the same.")
    for name in ("lease-check: due leases", "idle-reap", "lease-check: orphan sweep"):
        print(
            f"  {name:<26} items read x{b[name]['items read'] / a[name]['items read']:.2f}, "
            f"EC2 calls x{b[name]['ec2 calls'] / a[name]['ec2 calls']:.2f}, "
            f"wall time x{b[name]['wall s'] / a[name]['wall s']:.2f}"
        )
    due_leases = a["lease-check: due leases"]["items read"] / LEASE_DUE
    print(
        f"  per due item: {due_leases:.1f} items read per expired annex of {PER_ANNEX} instances, "
        f"{a['idle-reap']['items read'] / REAP_DUE:.1f} per reaped instance"
    )
    print(
        "  (moto pages DescribeInstances by reservation; EC2 returns at most 1,000 instances a page, so the\n"
        "   orphan sweep's one call here is one call per 1,000 running instances there. Wall times are\n"
        "   moto's: it scans the whole table for every Query, which is what grows from A to B.)"
    )
    print(f"\nbench time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
