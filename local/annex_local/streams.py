"""DynamoDB stream -> Lambda, offline: read the table's stream from moto, keep only the records the
template's FilterCriteria let through, and shape them as the event Lambda's event source mapping sends.

moto quirk: the dynamodbstreams client needs `account_id_endpoint_mode="disabled"` (otherwise moto
answers DescribeStream with 404 "Not yet implemented"), and GetRecords returns
ApproximateCreationDateTime as a datetime where Lambda sends epoch seconds.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config

from .template import load_template

STREAMS_CONFIG = Config(account_id_endpoint_mode="disabled")


def filter_patterns(function_logical_id: str, event_name: str | None = None) -> list[dict[str, Any]]:
    """The FilterCriteria patterns of a function's DynamoDB event in template.yaml."""
    events = load_template()["Resources"][function_logical_id]["Properties"].get("Events", {})
    patterns = []
    for name, spec in events.items():
        if spec.get("Type") != "DynamoDB" or (event_name and name != event_name):
            continue
        for f in spec["Properties"].get("FilterCriteria", {}).get("Filters", []):
            patterns.append(json.loads(f["Pattern"]))
    return patterns


def matches(pattern: Any, value: Any) -> bool:
    """Lambda event filtering for the subset the template uses: nested keys, and lists of exact values.
    Anything else (prefix, numeric, exists...) raises, so a test never passes on a pattern it ignored."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(key in value and matches(sub, value[key]) for key, sub in pattern.items())
    if isinstance(pattern, list):
        if any(isinstance(p, dict) for p in pattern):
            raise NotImplementedError(f"filter operator {pattern!r} is not supported locally")
        return value in pattern
    raise ValueError(f"a filter pattern leaf must be a list, not {pattern!r}")


def passes(patterns: list[dict[str, Any]], record: dict[str, Any]) -> bool:
    """A record reaches the function when any pattern matches (no patterns: every record)."""
    return not patterns or any(matches(p, record) for p in patterns)


def lambda_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": records}


class StreamReader:
    """Reads a table's stream from the start, then only what is new on each poll()."""

    def __init__(self, table_name: str, *, region: str = "us-east-1") -> None:
        ddb = boto3.client("dynamodb", region_name=region)
        self.stream_arn = ddb.describe_table(TableName=table_name)["Table"]["LatestStreamArn"]
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
                records.extend(self._as_lambda(r) for r in page["Records"])
            self._iterators[shard_id] = iterator
        return records

    def _as_lambda(self, record: dict[str, Any]) -> dict[str, Any]:
        change = dict(record["dynamodb"])
        created = change.get("ApproximateCreationDateTime")
        if isinstance(created, datetime):
            change["ApproximateCreationDateTime"] = int(created.timestamp())
        return {**record, "dynamodb": change, "eventSourceARN": self.stream_arn}
