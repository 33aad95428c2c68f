"""The local stack's event-source pieces behave like the AWS services they stand in for."""

import json
from datetime import timedelta

import pytest
from annex_local.scheduler import rate_seconds
from annex_local.streams import StreamMapping, StreamPoller, passes

INSERT_META = {
    "eventName": "INSERT",
    "dynamodb": {"NewImage": {"sk": {"S": "META"}, "state": {"S": "requested"}, "count": {"N": "3"}}},
}
MODIFY_META = {**INSERT_META, "eventName": "MODIFY"}
INSERT_EVENT = {"eventName": "INSERT", "dynamodb": {"NewImage": {"sk": {"S": "EVENT#2026"}}}}


def f(pattern):
    return {"Pattern": json.dumps(pattern)}


def test_filters_match_like_lambda_event_filtering():
    launch = f(
        {
            "eventName": ["INSERT"],
            "dynamodb": {"NewImage": {"sk": {"S": ["META"]}, "state": {"S": ["requested"]}}},
        }
    )
    assert passes([launch], INSERT_META)
    assert not passes([launch], MODIFY_META)
    assert not passes([launch], INSERT_EVENT)
    # filters are OR'ed; no filters pass everything
    assert passes([launch, f({"eventName": ["MODIFY"]})], MODIFY_META)
    assert passes([], INSERT_EVENT)


@pytest.mark.parametrize(
    ("pattern", "record", "expected"),
    [
        ({"dynamodb": {"NewImage": {"sk": {"S": [{"prefix": "EVENT#"}]}}}}, INSERT_EVENT, True),
        ({"dynamodb": {"NewImage": {"sk": {"S": [{"prefix": "INST#"}]}}}}, INSERT_EVENT, False),
        ({"eventName": [{"anything-but": ["REMOVE"]}]}, INSERT_META, True),
        ({"eventName": [{"anything-but": "INSERT"}]}, INSERT_META, False),
        ({"dynamodb": {"OldImage": [{"exists": False}]}}, INSERT_META, True),
        ({"dynamodb": {"NewImage": [{"exists": False}]}}, INSERT_META, False),
        ({"dynamodb": {"NewImage": {"count": {"N": [{"numeric": [">", 2, "<=", 3]}]}}}}, INSERT_META, True),
        ({"dynamodb": {"NewImage": {"count": {"N": [{"numeric": [">", 3]}]}}}}, INSERT_META, False),
        ({"eventName": [{"equals-ignore-case": "insert"}]}, INSERT_META, True),
    ],
)
def test_filter_rules(pattern, record, expected):
    assert passes([f(pattern)], record) is expected


@pytest.mark.parametrize(
    ("expression", "seconds"), [("rate(1 minute)", 60), ("rate(5 minutes)", 300), ("rate(2 hours)", 7200)]
)
def test_rate_expressions(expression, seconds):
    assert rate_seconds(expression) == seconds


def test_cron_is_refused_clearly():
    with pytest.raises(ValueError, match="rate"):
        rate_seconds("cron(0 12 * * ? *)")


class FakeStreams:
    def __init__(self, records):
        self.records = records

    def describe_stream(self, StreamArn):
        return {"StreamDescription": {"Shards": [{"ShardId": "s1"}]}}

    def get_shard_iterator(self, **kwargs):
        return {"ShardIterator": kwargs.get("SequenceNumber", "start")}

    def get_records(self, ShardIterator, Limit):
        after = 0 if ShardIterator == "start" else int(ShardIterator)
        return {"Records": [r for r in self.records if int(r["dynamodb"]["SequenceNumber"]) > after]}


def record(seq):
    return {"eventName": "INSERT", "dynamodb": {"SequenceNumber": str(seq), "NewImage": {}}}


def test_partial_batch_failure_retries_from_the_failed_record_then_dead_letters_and_moves_on():
    calls = []

    def invoke(fn, event):
        seqs = [r["dynamodb"]["SequenceNumber"] for r in event["Records"]]
        calls.append(seqs)
        return {"batchItemFailures": [{"itemIdentifier": "2"}]} if "2" in seqs else {}

    mapping = StreamMapping(
        "Launch", "arn:stream", [], batch_size=10, max_retries=1, report_item_failures=True
    )
    stream = FakeStreams([record(1), record(2), record(3)])
    poller = StreamPoller(mapping, stream, invoke)
    poller.poll_once()  # 1 succeeds, 2 fails: Lambda checkpoints at 2
    poller.poll_once()  # the one retry, from 2: fails again -> 2..3 go to the on-failure destination
    stream.records.append(record(4))
    poller.poll_once()  # the stream goes on after the dead-lettered batch
    assert calls == [["1", "2", "3"], ["2", "3"], ["4"]]
    assert poller.failed_to_dlq == 2


def test_behaviour_tag_parsing():
    from annex_local.nodes import parse_behaviour

    assert parse_behaviour("busy-then-idle:90s") == ("busy-then-idle", timedelta(seconds=90))
    assert parse_behaviour("idle") == ("idle", timedelta(0))
    assert parse_behaviour("nonsense") == ("busy", timedelta(0))
