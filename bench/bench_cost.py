"""The cost model of a deployment: idle, 100 instances, 100,000 instances, and what one instance's
heartbeats cost a month. The README's "Cost model" section is this script's output.

Every figure is derived, and the script says from what:
- from template.yaml: the alarms of the default deployment (conditions at their defaults), the secrets,
  the SSM parameters the stack names (the pool token; the administrator puts it), the SQS queues Lambda
  polls, the minute schedules, the heartbeat API's type and the heartbeat
  function's memory, architecture and tracing; the agent's period (`OnUnitActiveSec` of its timer);
- measured by running the real handlers against moto (in process): the custom metrics an idle stack
  sends (both minute sweeps run on an empty table; their EMF output is parsed), the DynamoDB requests
  of one instance's heartbeats over RUN_HOURS of reports timed as its agent times them, its claimed
  slots changing a few times an hour (botocore `before-call` hooks on the real heartbeat handler: most
  reports write nothing, see `rules.refresh_interval`) and the bytes it logs;
- computed: DynamoDB request units from the items' sizes (DynamoDB's item-size rules) and from which
  global secondary index entries a heartbeat writes (the index keys before and after, read back from
  moto) — moto's own ReturnConsumedCapacity answers are fixed constants, so they are not used;
- assumed (named constants below, not measured: no AWS account here): the heartbeat and sweep
  durations Lambda bills, and how often Lambda polls an idle SQS queue.

Prices: us-east-1 list prices, looked up on 2026-12-03 (PRICES names each source), not a bill. Free
tiers (always-free: 10 custom metrics, 10 alarms, 1M Lambda requests, 400,000 GB-s, 1M SQS requests,
100,000 X-Ray traces, 5 GB of logs a month per account) are not subtracted: they are per account, and
other workloads may use them.

Run: make bench   (or: .venv/bin/python bench/bench_cost.py)
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import math
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # functions.*, as the tests import them
sys.path.insert(0, str(ROOT / "layers" / "annex"))
sys.path.insert(0, str(ROOT / "local"))
os.environ.update(
    AWS_ACCESS_KEY_ID="bench",
    AWS_SECRET_ACCESS_KEY="bench",
    AWS_DEFAULT_REGION="us-east-1",
    MOTO_EC2_LOAD_DEFAULT_AMIS="false",
)

import boto3  # noqa: E402
from annex.aws import clients  # noqa: E402
from annex.core.models import Annex, AnnexState, Instance, InstanceState, Market  # noqa: E402
from annex.store import AnnexStore  # noqa: E402
from annex_local.http_api import http_event  # noqa: E402
from annex_local.template import (  # noqa: E402
    condition_holds,
    load_template,
    resolve_environment,
    table_create_kwargs,
)
from moto import mock_aws  # noqa: E402

TABLE = "annex-cost"
STACK = "annex-cost"
ACCOUNT = "123456789012"
ROLE = "annex-cost-AnnexInstanceRole-BENCH"
HOURS_PER_MONTH = 730
GB = 1e9  # CloudWatch Logs bills ingested GB; 10^9 bytes gives the higher figure
LOG_EVENT_OVERHEAD = 26  # bytes CloudWatch Logs adds to each event for ingestion billing

# name: (USD, unit, source) — us-east-1, looked up 2026-12-03
PRICES: dict[str, tuple[float, str, str]] = {
    "http_api": (
        1.00,
        "per million requests (first 300M/month; $0.90 after)",
        "aws.amazon.com/api-gateway/pricing",
    ),
    "http_api_over_300m": (
        0.90,
        "per million requests over 300M/month",
        "aws.amazon.com/api-gateway/pricing",
    ),
    "rest_api": (3.50, "per million requests (first 333M/month)", "aws.amazon.com/api-gateway/pricing"),
    "lambda_request": (0.20, "per million requests", "aws.amazon.com/lambda/pricing"),
    "lambda_arm_gb_s": (0.0000133334, "per GB-second, arm64", "aws.amazon.com/lambda/pricing"),
    "ddb_wru": (
        0.625,
        "per million write request units (on-demand)",
        "aws.amazon.com/dynamodb/pricing/on-demand",
    ),
    "ddb_rru": (
        0.125,
        "per million read request units (on-demand)",
        "aws.amazon.com/dynamodb/pricing/on-demand",
    ),
    "cw_metric": (
        0.30,
        "per custom metric-month (first 10,000; prorated by the hour sent)",
        "aws.amazon.com/cloudwatch/pricing",
    ),
    "cw_alarm": (0.10, "per standard-resolution alarm metric-month", "aws.amazon.com/cloudwatch/pricing"),
    "cw_logs": (0.50, "per GB of logs ingested", "aws.amazon.com/cloudwatch/pricing"),
    "xray": (5.00, "per million traces recorded", "aws.amazon.com/xray/pricing"),
    "secret": (0.40, "per secret-month", "aws.amazon.com/secrets-manager/pricing"),
    "ssm_parameter": (
        0.0,
        "per standard-tier parameter-month (standard throughput: no charge per request)",
        "aws.amazon.com/systems-manager/pricing",
    ),
    "sqs": (0.40, "per million requests (standard queues)", "aws.amazon.com/sqs/pricing"),
}
# Scheduled EventBridge rules and AWS-service events are free (aws.amazon.com/eventbridge/pricing).

# Assumed, not measured (no AWS account here): billed milliseconds of a warm heartbeat (two DynamoDB
# round trips in-region plus ~2 ms of our code, measured under moto by bench_request-style timing) and of
# an idle sweep run; ReceiveMessage calls Lambda makes on an idle queue it polls (five long-polling
# pollers, 20 s waits).
ASSUMED_HEARTBEAT_MS = 25
ASSUMED_IDLE_SWEEP_MS = 150
ASSUMED_IDLE_POLLS_PER_QUEUE_MONTH = 5 * 3 * 60 * HOURS_PER_MONTH


def price(name: str) -> float:
    return PRICES[name][0]


# --- the template --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateFacts:
    alarms: list[str]
    secrets: int
    ssm_parameters: list[str]  # the functions' variables naming a parameter the stack does not create
    polled_queues: list[str]
    minute_schedules: list[str]
    heartbeat_api_type: str
    heartbeat_memory_mb: int
    heartbeat_arch: str
    heartbeat_tracing: str
    heartbeat_period_s: int
    traced_functions: list[str]


def _deployed(resource: dict[str, Any]) -> bool:
    return "Condition" not in resource or condition_holds(resource["Condition"])


def template_facts() -> TemplateFacts:
    tpl = load_template()
    res = {k: v for k, v in tpl["Resources"].items() if _deployed(v)}
    fn_globals = tpl["Globals"]["Function"]
    hb = res["HeartbeatFunction"]["Properties"]
    polled = [
        str(e["Properties"]["Queue"]["Fn::GetAtt"][0])
        for r in res.values()
        if r["Type"] == "AWS::Serverless::Function"
        for e in (r["Properties"].get("Events") or {}).values()
        if e["Type"] == "SQS"
    ]
    minute = [
        name
        for name, r in res.items()
        if r["Type"] == "AWS::Serverless::Function"
        for e in (r["Properties"].get("Events") or {}).values()
        if e["Type"] == "Schedule" and e["Properties"]["Schedule"] == "rate(1 minute)"
    ]
    traced = [
        name
        for name, r in res.items()
        if r["Type"] == "AWS::Serverless::Function"
        and r["Properties"].get("Tracing", fn_globals.get("Tracing")) == "Active"
    ]
    timer = (ROOT / "layers/annex/annex/launch/userdata/annex-node.sh").read_text()
    period = re.search(r"^OnUnitActiveSec=(\d+)$", timer, flags=re.M)
    assert period, "the agent's timer period"
    return TemplateFacts(
        alarms=sorted(n for n, r in res.items() if r["Type"] == "AWS::CloudWatch::Alarm"),
        secrets=sum(r["Type"] == "AWS::SecretsManager::Secret" for r in res.values()),
        ssm_parameters=sorted(
            var
            for r in res.values()
            if r["Type"] == "AWS::Serverless::Function"
            for var in ((r["Properties"].get("Environment") or {}).get("Variables") or {})
            if var.endswith("_PARAMETER")
        ),
        polled_queues=polled,
        minute_schedules=minute,
        heartbeat_api_type=res["HeartbeatApi"]["Type"],
        heartbeat_memory_mb=int(hb.get("MemorySize", fn_globals["MemorySize"])),
        heartbeat_arch=str(hb.get("Architectures", fn_globals["Architectures"])[0]),
        heartbeat_tracing=str(hb.get("Tracing", fn_globals.get("Tracing"))),
        heartbeat_period_s=int(period.group(1)),
        traced_functions=traced,
    )


# --- the code --------------------------------------------------------------------------------------


def metric_calls() -> dict[str, list[str]]:
    """Every custom metric name the code can send, per source file (from its `add_metric` and
    `single_metric` calls; a name given as a module constant is resolved in that module)."""
    out: dict[str, list[str]] = {}
    files = sorted((ROOT / "functions").glob("*/app.py")) + sorted(
        (ROOT / "layers/annex/annex").rglob("*.py")
    )
    for path in files:
        tree = ast.parse(path.read_text())
        constants = {
            t.id: n.value.value
            for n in tree.body
            if isinstance(n, ast.Assign)
            and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        names = []
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called not in ("add_metric", "single_metric"):
                continue
            for kw in node.keywords:
                if kw.arg == "name":
                    if isinstance(kw.value, ast.Constant):
                        names.append(str(kw.value.value))
                    elif isinstance(kw.value, ast.Name):
                        names.append(constants.get(kw.value.id, kw.value.id))
        if names:
            out[str(path.relative_to(ROOT))] = sorted(set(names))
    return out


# --- measured on moto ---------------------------------------------------------------------------


def emf_metrics(out: str) -> set[tuple[str, str, tuple[tuple[str, str], ...]]]:
    found = set()
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            blob = json.loads(line)
            if isinstance(blob, dict) and "_aws" in blob:
                for d in blob["_aws"]["CloudWatchMetrics"]:
                    for dims in d["Dimensions"]:
                        key = tuple(sorted((n, str(blob[n])) for n in dims))
                        found |= {(d["Namespace"], m["Name"], key) for m in d["Metrics"]}
    return found


@contextlib.contextmanager
def function(name: str, logical_id: str) -> Iterator[Any]:
    env = resolve_environment(
        logical_id,
        table_name=TABLE,
        stack_name=STACK,
        overrides={
            "AnnexInstanceRole": ROLE,
            "LeaseTimerQueue": "",
            "AnnexInstanceProfile.Arn": f"arn:aws:iam::123456789012:instance-profile/{STACK}",
        },
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    module = importlib.import_module(f"functions.{name}.app")
    for attr in ("settings", "service", "deps"):
        if hasattr(module, attr):
            getattr(module, attr).cache_clear()
    clients.client.cache_clear()
    try:
        yield module
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def logs_to(logger: Any, stream: io.StringIO) -> Iterator[None]:
    """The function's Logger writes to `stream` (it holds the stdout of its import time)."""
    handler = logger.registered_handler
    previous = handler.setStream(stream)
    try:
        yield
    finally:
        handler.setStream(previous)


class Context:
    function_name = "bench"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:bench"
    aws_request_id = "00000000-0000-4000-8000-000000000000"
    log_group_name = "/aws/lambda/bench"
    log_stream_name = "bench"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def schedule_event(at: datetime) -> dict[str, Any]:
    event = json.loads((ROOT / "events" / "lease-check-schedule.json").read_text())
    event["time"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return event


def idle_sweep_metrics(at: datetime) -> set[tuple[str, str, tuple[tuple[str, str], ...]]]:
    from annex.failsafe.sweeps import sweep_handler

    sent: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
    for name, logical_id in (("lease_check", "LeaseCheckFunction"), ("idle_reap", "IdleReapFunction")):
        with function(name, logical_id) as m:
            handler = sweep_handler(
                m.settings,
                m.deps,
                m.run,
                logger=m.logger,
                metrics=m.metrics,
                clock=lambda: at,
            )
            out = io.StringIO()
            with contextlib.redirect_stdout(out), logs_to(m.logger, io.StringIO()):
                handler(schedule_event(at), Context())
            sent |= emf_metrics(out.getvalue())
    return sent


def _size(value: dict[str, Any]) -> int:
    """The size DynamoDB counts for one attribute value (its item-size rules)."""
    (kind, v), *_ = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        digits = len(v.lstrip("-").replace(".", "").strip("0")) or 1
        return math.ceil(digits / 2) + 1
    if kind == "B":
        return len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + _size(x) + 1 for k, x in v.items())
    if kind == "L":
        return 3 + sum(_size(x) + 1 for x in v)
    if kind in ("SS", "NS", "BS"):
        return sum(_size({kind[0]: x}) for x in v)
    raise ValueError(kind)


def item_size(item: dict[str, Any] | None) -> int:
    return sum(len(k.encode()) + _size(v) for k, v in (item or {}).items())


@dataclass
class Units:
    rru: float = 0.0
    wru: float = 0.0
    requests: int = 0


# The run the heartbeat figures are measured over: one busy instance reporting for RUN_HOURS, its agent
# timed as annex-node.sh and annex-heartbeat.sh time it (the timer period, its AccuracySec, the jitter
# sleep; read from those files), its claimed slots changing three times an hour (jobs ending and starting,
# three minutes with nothing claimed), a seeded random jitter. A steady instance changes less.
RUN_HOURS = 4
RUN_SEED = 13
CLAIMED_BY_MINUTE = ((0, 4), (20, 3), (35, 0), (38, 4))  # (minute of the hour it starts, claimed of 4)


@dataclass(frozen=True)
class AgentTiming:
    period_s: int
    accuracy_s: int
    jitter_s: int


def agent_timing(period_s: int) -> AgentTiming:
    timer = (ROOT / "layers/annex/annex/launch/userdata/annex-node.sh").read_text()
    agent = (ROOT / "layers/annex/annex/launch/userdata/annex-heartbeat.sh").read_text()
    accuracy = re.search(r"^AccuracySec=(\d+)$", timer, flags=re.M)
    jitter = re.search(r"^JITTER_SECONDS=\$\{ANNEX_JITTER_SECONDS:-(\d+)\}$", agent, flags=re.M)
    assert accuracy, "the agent's timer accuracy (AccuracySec)"
    assert jitter, "the agent's jitter (JITTER_SECONDS)"
    return AgentTiming(period_s, int(accuracy.group(1)), int(jitter.group(1)))


def report_times(start: datetime, timing: AgentTiming, hours: int) -> list[datetime]:
    """When the agent's reports arrive: the timer fires every period (+ up to its accuracy), each run
    sleeps 0..jitter seconds before it reports."""
    rng = random.Random(RUN_SEED)
    out: list[datetime] = []
    fired = start
    while fired < start + timedelta(hours=hours):
        out.append(fired + timedelta(seconds=rng.randint(0, timing.jitter_s)))
        fired += timedelta(seconds=timing.period_s + rng.randint(0, timing.accuracy_s))
    return out


def claimed_at(start: datetime, at: datetime) -> int:
    minute = ((at - start).total_seconds() / 60) % 60
    return [claimed for begins, claimed in CLAIMED_BY_MINUTE if begins <= minute][-1]


@dataclass
class HeartbeatRun:
    """What one instance's reports cost, measured over the run: units per report, the operations made
    (count over the run), reports, the writes among them, the bytes the function logs per report."""

    units: Units
    ops: Counter[str]
    reports: int
    writes: int
    log_bytes: int
    index_wru: float  # per report, the part of units.wru the `due` index's entries cost


def heartbeat_units(ddb: Any, timing: AgentTiming) -> HeartbeatRun:
    """Run the real heartbeat handler over RUN_HOURS of one instance's reports and meter every DynamoDB
    request it makes (the first report, which moves the instance from pending to running, is left out)."""
    tpl_table = load_template()["Resources"]["AnnexTable"]["Properties"]
    indexes = tpl_table.get("GlobalSecondaryIndexes", [])
    store = AnnexStore(ddb, TABLE)
    t0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    annex = Annex(
        id=store.new_annex_id(),
        name="cost",
        owner=f"arn:aws:iam::{ACCOUNT}:user/alice",
        state=AnnexState.REQUESTED,
        count=1,
        instance_types=["c7i.xlarge"],
        market=Market.ON_DEMAND,
        lease_expires_at=t0 + timedelta(days=2),
        idle_timeout_seconds=1200,
        created_at=t0,
        updated_at=t0,
    )
    store.create_annex(
        annex,
        fingerprint="cost",
        max_live_per_owner=10,
        max_live_in_stack=10,
        actor="bench",
        retention=timedelta(days=30),
    )
    store.set_state(
        annex.id, expected=[AnnexState.REQUESTED], new_state=AnnexState.LAUNCHING, now=t0, actor="launch"
    )
    store.set_state(
        annex.id, expected=[AnnexState.LAUNCHING], new_state=AnnexState.RUNNING, now=t0, actor="launch"
    )
    instance_id = "i-0c0571234567890ab"
    store.put_instances(
        [
            Instance(
                instance_id=instance_id,
                annex_id=annex.id,
                instance_type="c7i.xlarge",
                zone="us-east-1a",
                market=Market.ON_DEMAND,
                state=InstanceState.PENDING,
                launched_at=t0,
            )
        ],
        reap_at=t0 + timedelta(minutes=15),
    )

    def snapshot() -> dict[str, dict[str, Any]]:
        return {f"{i['pk']}|{i['sk']}": i for i in ddb.scan(TableName=TABLE)["Items"]}

    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, params))

    units = Units()
    log_bytes = 0
    ops: Counter[str] = Counter()
    writes = 0
    index_wru = 0.0
    start = t0 + timedelta(minutes=2)
    times = report_times(start, timing, RUN_HOURS)
    with function("heartbeat", "HeartbeatFunction") as m:
        ddb_client = clients.dynamodb()
        ddb_client.meta.events.register("before-parameter-build.dynamodb.*", record)
        caller = f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/{instance_id}"
        for n, at in enumerate(times):
            body = json.dumps(
                {
                    "instance_id": instance_id,
                    "annex_id": annex.id,
                    "claimed_slots": claimed_at(start, at),
                    "total_slots": 4,
                }
            )
            before = snapshot()
            calls.clear()
            out = io.StringIO()
            with contextlib.redirect_stdout(out), logs_to(m.logger, out):
                resp = m.handler(
                    http_event("POST", "/heartbeat", caller_arn=caller, body=body),
                    Context(),
                    clock=lambda at=at: at,
                )
            assert resp["statusCode"] == 200, resp
            after = snapshot()
            if n == 0:
                continue  # the first heartbeat moves the instance from pending to running
            log_bytes += sum(len(line) + LOG_EVENT_OVERHEAD for line in out.getvalue().splitlines())
            ops.update(op for op, _ in calls)
            units.requests += len(calls)
            writes += any(op in ("UpdateItem", "PutItem", "DeleteItem") for op, _ in calls)
            for op, params in calls:
                if op == "BatchGetItem":
                    for spec in params["RequestItems"].values():
                        factor = 1.0 if spec.get("ConsistentRead") else 0.5
                        for key in spec["Keys"]:
                            item = before.get(f"{key['pk']}|{key['sk']}")
                            units.rru += factor * max(1, math.ceil(item_size(item) / 4096))
                elif op == "GetItem":
                    factor = 1.0 if params.get("ConsistentRead") else 0.5
                    key = params["Key"]
                    units.rru += factor * max(
                        1, math.ceil(item_size(before.get(f"{key['pk']}|{key['sk']}")) / 4096)
                    )
                elif op in ("UpdateItem", "PutItem", "DeleteItem"):
                    key = params.get("Key") or {k: params["Item"][k] for k in ("pk", "sk")}
                    k = f"{key['pk']}|{key['sk']}"
                    old, new = before.get(k), after.get(k)
                    units.wru += max(1, math.ceil(max(item_size(old), item_size(new)) / 1024))
                    moved = index_writes(indexes, old, new)
                    units.wru += moved
                    index_wru += moved
                else:
                    raise ValueError(f"a heartbeat made {op}: add its units to bench_cost")
    reports = len(times) - 1
    return HeartbeatRun(
        Units(units.rru / reports, units.wru / reports, units.requests // reports),
        ops,
        reports,
        writes,
        log_bytes // reports,
        index_wru / reports,
    )


def index_writes(
    indexes: list[dict[str, Any]], old: dict[str, Any] | None, new: dict[str, Any] | None
) -> float:
    """Write units a base-table write costs in the global secondary indexes (DynamoDB: an entry whose key
    changes is a delete and a put; a projected attribute change is one write; entering or leaving is one)."""
    total = 0.0
    for index in indexes:
        keys = [k["AttributeName"] for k in index["KeySchema"]]
        in_old = bool(old) and all(k in old for k in keys)  # type: ignore[operator]
        in_new = bool(new) and all(k in new for k in keys)  # type: ignore[operator]
        if not in_old and not in_new:
            continue
        projection = index["Projection"]["ProjectionType"]
        if in_old and in_new:
            key_moved = any(old[k] != new[k] for k in keys)  # type: ignore[index]
            if key_moved:
                total += 2
            elif projection == "ALL" and old != new:
                total += 1
        else:
            total += 1
    return total


# --- the model ---------------------------------------------------------------------------------------


def main() -> None:
    facts = template_facts()
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(**table_create_kwargs(TABLE))
        boto3.client("ec2", region_name="us-east-1")
        idle_metrics = idle_sweep_metrics(datetime(2026, 12, 3, 12, 0, tzinfo=UTC))
        run = heartbeat_units(ddb, agent_timing(facts.heartbeat_period_s))
    units, fn_log_bytes = run.units, run.log_bytes

    # idle: what the stack costs with nothing running
    minutes = HOURS_PER_MONTH * 60
    sweep_runs = len(facts.minute_schedules) * minutes
    traced_sweeps = [f for f in facts.minute_schedules if f in facts.traced_functions]
    idle = {
        f"custom metrics ({len(idle_metrics)} sent every hour)": len(idle_metrics) * price("cw_metric"),
        f"alarms ({len(facts.alarms)})": len(facts.alarms) * price("cw_alarm"),
        f"secrets ({facts.secrets})": facts.secrets * price("secret"),
        f"SSM parameters, standard tier ({len(facts.ssm_parameters)}: the pool token)": len(
            facts.ssm_parameters
        )
        * price("ssm_parameter"),
        f"minute sweeps: {sweep_runs:,} Lambda requests": sweep_runs * price("lambda_request") / 1e6,
        f"minute sweeps: GB-s at {ASSUMED_IDLE_SWEEP_MS} ms (assumed)": sweep_runs
        * ASSUMED_IDLE_SWEEP_MS
        / 1000
        * 0.5
        * price("lambda_arm_gb_s"),
        f"X-Ray traces of the sweeps ({len(traced_sweeps)} traced)": len(traced_sweeps)
        * minutes
        * price("xray")
        / 1e6,
        f"SQS polls of {len(facts.polled_queues)} idle queues (assumed rate)": len(facts.polled_queues)
        * ASSUMED_IDLE_POLLS_PER_QUEUE_MONTH
        * price("sqs")
        / 1e6,
    }
    fixed = sum(v for k, v in idle.items() if k.startswith(("custom", "alarms", "secrets")))
    idle_total = sum(idle.values())

    # one instance's heartbeats for a month
    beats = HOURS_PER_MONTH * 3600 / facts.heartbeat_period_s
    access_log = access_log_bytes()
    gb_s = facts.heartbeat_memory_mb / 1024 * ASSUMED_HEARTBEAT_MS / 1000
    per_instance = {
        f"HTTP API requests ({beats:,.0f})": beats * price("http_api") / 1e6,
        "Lambda requests": beats * price("lambda_request") / 1e6,
        f"Lambda GB-s ({facts.heartbeat_memory_mb} MB {facts.heartbeat_arch}, {ASSUMED_HEARTBEAT_MS} ms assumed)": beats
        * gb_s
        * price("lambda_arm_gb_s"),
        f"DynamoDB {units.wru:.3f} WRU + {units.rru:g} RRU per heartbeat (measured over {RUN_HOURS} h)": beats
        * (units.wru * price("ddb_wru") + units.rru * price("ddb_rru"))
        / 1e6,
        f"logs: access log {access_log} B + function {fn_log_bytes} B per heartbeat": beats
        * (access_log + fn_log_bytes)
        * price("cw_logs")
        / GB,
        f"X-Ray (function tracing {facts.heartbeat_tracing})": 0.0
        if facts.heartbeat_tracing != "Active"
        else beats * price("xray") / 1e6,
    }
    per_instance_total = sum(per_instance.values())

    def fleet(n: int) -> float:
        requests = n * beats
        api = (
            min(requests, 300e6) * price("http_api") / 1e6
            + max(0.0, requests - 300e6) * price("http_api_over_300m") / 1e6
        )
        return idle_total + n * (per_instance_total - per_instance[next(iter(per_instance))]) + api

    print("Annex cost model - us-east-1 list prices looked up 2026-12-03 (sources below), a 730-hour month")
    print(f"\nheartbeat API: {facts.heartbeat_api_type}; agent period {facts.heartbeat_period_s} s")
    print(
        f"heartbeats measured: {run.reports} reports of one instance over {RUN_HOURS} h (the real handler on moto; "
        f"claimed slots changing {len(CLAIMED_BY_MINUTE) - 1} times an hour); {run.writes} of them wrote "
        f"({run.writes / run.reports:.1%}); DynamoDB requests: "
        + ", ".join(f"{op} {n}" for op, n in sorted(run.ops.items()))
        + f"; per report {units.rru:g} RRU, {units.wru - run.index_wru:.3f} table WRU + "
        f"{run.index_wru:.3f} `due` index WRU (computed from the items and index keys before and after)"
    )
    print("custom metrics the code can send (its add_metric / single_metric calls):")
    for source, names in metric_calls().items():
        print(f"  {source}: {', '.join(names)}")
    print(
        f"custom metrics an idle stack sends (measured: both sweeps run on an empty table): {sorted(m for _, m, _ in idle_metrics)}"
    )
    print(f"alarms of the default deployment: {', '.join(facts.alarms)}")
    print("\nidle deployment, per month:")
    for k, v in idle.items():
        print(f"  {k:<62} ${v:8.4f}")
    print(f"  {'fixed charges (metrics, alarms, secrets)':<62} ${fixed:8.4f}")
    print(f"  {'total':<62} ${idle_total:8.4f}")
    print("\nheartbeats of one instance, per month:")
    for k, v in per_instance.items():
        print(f"  {k:<75} ${v:8.4f}")
    print(f"  {'total':<75} ${per_instance_total:8.4f}")
    rest = beats * price("rest_api") / 1e6
    print(
        f"  (the same requests on a REST API: ${rest:.4f} instead of ${per_instance[next(iter(per_instance))]:.4f})"
    )
    print("\ndeployment per month (idle + heartbeats; EC2 itself not included):")
    for n in (0, 100, 100_000):
        print(f"  {n:>7,} instances  ${fleet(n):12,.2f}")
    print("\nprices:")
    for name, (usd, unit, source) in PRICES.items():
        print(f"  {name:<20} ${usd:<13g} {unit} - {source}")
    print(f"\nheartbeat cost per instance-month: ${per_instance_total:.4f}")
    print(f"idle deployment per month: ${idle_total:.2f} (fixed charges ${fixed:.2f})")


def access_log_bytes() -> int:
    """One access-log line of the heartbeat API, its template format filled with typical values."""
    fmt = load_template()["Resources"]["HeartbeatApi"]["Properties"]["AccessLogSettings"]["Format"]
    values = {
        "$context.requestId": "Ab1Cd2Ef3Gh4Ij=",
        "$context.identity.userArn": f"arn:aws:sts::{ACCOUNT}:assumed-role/annex-prod-AnnexInstanceRole-1A2B3C4D5E6F/i-0123456789abcdef0",
        "$context.status": "200",
        "$context.error.message": "-",
        "$context.responseLatency": "38",
        "$context.requestTimeEpoch": "1796300000000",
    }
    line = fmt
    for var in sorted(values, key=len, reverse=True):
        line = line.replace(var, values[var])
    assert "$context" not in line, line
    return len(line) + LOG_EVENT_OVERHEAD


if __name__ == "__main__":
    main()
