"""DynamoDB stream -> Lambda, offline. `StreamPoller` is an event source mapping as Lambda runs one: it
polls the table's stream, applies the template's FilterCriteria, calls the function in batches,
honours ReportBatchItemFailures, retries up to MaximumRetryAttempts and then sends the batch to the
on-failure destination (an SQS queue). `StreamReader` just reads (the integration tests deliver by hand).

moto quirks: the dynamodbstreams client needs `account_id_endpoint_mode="disabled"` (otherwise moto
answers DescribeStream with 404 "Not yet implemented"), and GetRecords returns
ApproximateCreationDateTime as a datetime where Lambda sends epoch seconds.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config

from annex_local.template import load_template

STREAMS_CONFIG = Config(account_id_endpoint_mode="disabled")
log = logging.getLogger("annex_local.streams")


# --- Lambda event filtering (the subset of the pattern language a stream filter uses) -----------------


def matches(pattern: Any, value: Any) -> bool:
    """Does `value` (a stream record, as Lambda sees it) match one filter `pattern`?"""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        for key, sub in pattern.items():
            if isinstance(sub, list) and any(isinstance(r, dict) and "exists" in r for r in sub):
                want = next(r["exists"] for r in sub if isinstance(r, dict) and "exists" in r)
                if (key in value) != bool(want):
                    return False
                if not want:
                    continue
            if key not in value:
                return False
            if not matches(sub, value[key]):
                return False
        return True
    if isinstance(pattern, list):
        return any(_rule(rule, value) for rule in pattern)
    return bool(pattern == value)


def _rule(rule: Any, value: Any) -> bool:
    if not isinstance(rule, dict):
        return bool(rule == value)
    if "exists" in rule:
        return True  # checked by the caller against the key's presence
    if "prefix" in rule:
        return isinstance(value, str) and value.startswith(rule["prefix"])
    if "anything-but" in rule:
        banned = rule["anything-but"]
        banned = banned if isinstance(banned, list) else [banned]
        return value not in banned
    if "equals-ignore-case" in rule:
        return isinstance(value, str) and value.lower() == str(rule["equals-ignore-case"]).lower()
    if "numeric" in rule:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return False
        ops = rule["numeric"]
        checks = {
            "=": number.__eq__,
            "<": number.__lt__,
            "<=": number.__le__,
            ">": number.__gt__,
            ">=": number.__ge__,
        }
        return all(checks[op](float(arg)) for op, arg in zip(ops[::2], ops[1::2], strict=True))
    return False


def passes(patterns: list[Any], record: dict[str, Any]) -> bool:
    """A record reaches the function when any pattern matches (no patterns: every record). Patterns are
    FilterCriteria filters ({"Pattern": "<json>"}) or already-parsed patterns."""
    if not patterns:
        return True
    parsed = [json.loads(p["Pattern"]) if isinstance(p, dict) and "Pattern" in p else p for p in patterns]
    return any(matches(p, record) for p in parsed)


def filter_patterns(function_logical_id: str, event_name: str | None = None) -> list[dict[str, Any]]:
    """The FilterCriteria patterns of a function's DynamoDB event in template.yaml, parsed."""
    events = load_template()["Resources"][function_logical_id]["Properties"].get("Events", {})
    patterns = []
    for name, spec in events.items():
        if spec.get("Type") != "DynamoDB" or (event_name and name != event_name):
            continue
        for f in spec["Properties"].get("FilterCriteria", {}).get("Filters", []):
            patterns.append(json.loads(f["Pattern"]))
    return patterns


def lambda_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": records}


class StreamReader:
    """Reads a table's stream from the start, then only what is new on each poll() (in-process moto)."""

    def __init__(self, table_name: str, *, region: str = "us-east-1") -> None:
        ddb = boto3.client("dynamodb", region_name=region)
        self.stream_arn = ddb.describe_table(TableName=table_name)["Table"]["LatestStreamArn"]
        self.region = region
        self._streams = boto3.client("dynamodbstreams", region_name=region, config=STREAMS_CONFIG)
        self._iterators: dict[str, str | None] = {}

    def poll(self) -> list[dict[str, Any]]:
        """New records, as Lambda delivers them (eventSourceARN added, times in epoch seconds)."""
        shards = self._streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"]
        records: list[dict[str, Any]] = []
        for shard in shards:
            shard_id = shard["ShardId"]
            if shard_id not in self._iterators:
                self._iterators[shard_id] = self._streams.get_shard_iterator(
                    StreamArn=self.stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
            iterator = self._iterators[shard_id]
            while iterator:
                page = self._streams.get_records(ShardIterator=iterator)
                iterator = page.get("NextShardIterator")
                if not page["Records"]:
                    break
                records.extend(as_lambda_record(r, self.stream_arn, self.region) for r in page["Records"])
            self._iterators[shard_id] = iterator
        return records


# --- the poller ----------------------------------------------------------------------------------


@dataclass
class StreamMapping:
    function_id: str
    stream_arn: str
    filters: list[dict[str, Any]]
    batch_size: int = 100
    starting_position: str = "TRIM_HORIZON"
    max_retries: int = -1
    on_failure_queue_url: str | None = None
    report_item_failures: bool = False


@dataclass
class StreamPoller:
    mapping: StreamMapping
    streams: Any  # boto3 dynamodbstreams client
    invoke: Callable[[str, Any], Any]
    sqs: Any = None
    region: str = "us-east-1"
    delivered: int = 0
    failed_to_dlq: int = 0
    _positions: dict[str, str] = field(default_factory=dict)
    _starts: dict[str, str | None] = field(default_factory=dict)
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _attempts: int = 0

    def poll_once(self) -> int:
        """Fetch new records from every shard, filter, and deliver. Returns records delivered."""
        records = self._pending or self._fetch()
        self._pending = []
        records = [r for r in records if passes(self.mapping.filters, r)]
        delivered = 0
        for start in range(0, len(records), self.mapping.batch_size):
            batch = records[start : start + self.mapping.batch_size]
            failed_from = self._deliver(batch)
            if failed_from is None:
                delivered += len(batch)
                self._attempts = 0
                continue
            remainder = batch[failed_from:] + records[start + self.mapping.batch_size :]
            self._attempts += 1
            if 0 <= self.mapping.max_retries < self._attempts:
                self._to_dlq(batch[failed_from:])
                self._attempts = 0
                self._pending = records[start + self.mapping.batch_size :]
            else:
                self._pending = remainder
            break
        self.delivered += delivered
        return delivered

    def _fetch(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        shards = self.streams.describe_stream(StreamArn=self.mapping.stream_arn)["StreamDescription"][
            "Shards"
        ]
        for shard in shards:
            shard_id = shard["ShardId"]
            after = self._positions.get(shard_id)
            kwargs: dict[str, Any] = {"StreamArn": self.mapping.stream_arn, "ShardId": shard_id}
            iterator = None
            if after:
                kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after)
            else:
                # LATEST is where the mapping started, not where each poll starts: keep the iterator
                # until a first record gives a position (a fresh LATEST iterator per poll would skip
                # whatever was written between two polls).
                iterator = self._starts.get(shard_id)
                kwargs.update(ShardIteratorType=self.mapping.starting_position)
            if iterator is None:
                iterator = self.streams.get_shard_iterator(**kwargs)["ShardIterator"]
            resp = self.streams.get_records(ShardIterator=iterator, Limit=1000)
            if not after and not resp.get("Records"):
                self._starts[shard_id] = resp.get("NextShardIterator")
            for raw in resp.get("Records", []):
                record = as_lambda_record(raw, self.mapping.stream_arn, self.region)
                out.append(record)
                self._positions[shard_id] = raw["dynamodb"]["SequenceNumber"]
        return out

    def _deliver(self, batch: list[dict[str, Any]]) -> int | None:
        """Invoke with the batch. Returns None on success, else the index of the first failed record."""
        try:
            result = self.invoke(self.mapping.function_id, {"Records": batch})
        except Exception:
            log.exception("%s failed on a batch of %d stream records", self.mapping.function_id, len(batch))
            return 0
        failures = (result or {}).get("batchItemFailures") or [] if self.mapping.report_item_failures else []
        if not failures:
            return None
        ids = [f.get("itemIdentifier") for f in failures]
        seqs = [r["dynamodb"]["SequenceNumber"] for r in batch]
        return min((seqs.index(i) for i in ids if i in seqs), default=0)

    def _to_dlq(self, records: list[dict[str, Any]]) -> None:
        self.failed_to_dlq += len(records)
        log.error("%s: %d stream records exhausted their retries", self.mapping.function_id, len(records))
        if self.sqs is None or not self.mapping.on_failure_queue_url:
            return
        first, last = records[0]["dynamodb"], records[-1]["dynamodb"]
        self.sqs.send_message(
            QueueUrl=self.mapping.on_failure_queue_url,
            MessageBody=json.dumps(
                {
                    "requestContext": {
                        "condition": "RetryAttemptsExhausted",
                        "functionArn": self.mapping.function_id,
                    },
                    "DDBStreamBatchInfo": {
                        "streamArn": self.mapping.stream_arn,
                        "startSequenceNumber": first["SequenceNumber"],
                        "endSequenceNumber": last["SequenceNumber"],
                        "batchSize": len(records),
                    },
                    "timestamp": datetime.now(UTC).isoformat(),
                }
            ),
        )

    def run(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("stream poll failed; retrying")
            stop.wait(interval)


def as_lambda_record(raw: dict[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    record = dict(raw)
    record.setdefault("eventSource", "aws:dynamodb")
    record.setdefault("awsRegion", region)
    record["eventSourceARN"] = stream_arn
    dyn = dict(record["dynamodb"])
    if isinstance(dyn.get("ApproximateCreationDateTime"), datetime):
        dyn["ApproximateCreationDateTime"] = int(dyn["ApproximateCreationDateTime"].timestamp())
    record["dynamodb"] = dyn
    return record
