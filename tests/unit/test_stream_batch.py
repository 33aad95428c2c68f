"""annex.aws.batch answers a DynamoDB stream batch as Powertools' BatchProcessor (EventType.DynamoDBStreams)
with process_partial_response does (v3.37.0, installed in the dev venv, so it judges here): every record
handled, failed records reported by sequence number and logged, the whole batch raised when every record
failed, an empty batch refused; record images decoded as Powertools' DynamoDBRecord decodes them."""

from __future__ import annotations

import copy
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from annex.aws.batch import StreamRecord, process_stream_batch
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError, UnexpectedBatchTypeError
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

EVENTS = Path(__file__).resolve().parents[2] / "events"


def stream_record(seq: str | None, state: str) -> dict[str, Any]:
    """A stream record of the checked-in event, with its own sequence number (None: without one) and the
    state the handler below reads ("bad" makes it fail)."""
    (record,) = json.loads((EVENTS / "launch-modify-running.json").read_text())["Records"]
    record = copy.deepcopy(record)
    if seq is None:
        del record["dynamodb"]["SequenceNumber"]
    else:
        record["dynamodb"]["SequenceNumber"] = seq
    record["dynamodb"]["NewImage"]["state"] = {"S": state}
    record["eventID"] = f"event-{seq}-{state}"
    return record


class Handler:
    """Records the state of each record it sees; raises on state "bad"."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, record: StreamRecord | DynamoDBRecord) -> None:
        change = record if isinstance(record, StreamRecord) else record.dynamodb
        assert change is not None
        image = change.new_image
        self.seen.append(image["state"])
        if image["state"] == "bad":
            raise RuntimeError(f"cannot handle {image['id']}")


def fresh_logger(out: io.StringIO) -> Logger:
    # Powertools keeps the first handler of a logger name: a new name per test, so each writes to its own.
    return Logger(service=f"batch-test-{uuid.uuid4().hex}", stream=out)


def ours(event: dict[str, Any]) -> tuple[Any, list[str], list[dict[str, Any]]]:
    """(response, states handled, log lines) of annex.aws.batch."""
    out = io.StringIO()
    handler = Handler()
    response = process_stream_batch(event, handler, fresh_logger(out))
    return response, handler.seen, [json.loads(line) for line in out.getvalue().splitlines()]


def powertools(event: dict[str, Any]) -> tuple[Any, list[str]]:
    handler = Handler()
    response = process_partial_response(
        event=event, record_handler=handler, processor=BatchProcessor(event_type=EventType.DynamoDBStreams)
    )
    return response, handler.seen


def test_one_failed_record_is_reported_and_logged_and_the_others_are_handled():
    # Given a batch whose second record fails
    event = {"Records": [stream_record("111", "ok"), stream_record("222", "bad"), stream_record("333", "ok")]}

    # When it is processed
    response, seen, logs = ours(copy.deepcopy(event))

    # Then all three were handled, only the failed one is reported, as Powertools reports it
    assert seen == ["ok", "bad", "ok"]
    assert response == {"batchItemFailures": [{"itemIdentifier": "222"}]}
    assert (response, seen) == powertools(copy.deepcopy(event))
    # and the log names the record and carries the traceback
    (warning,) = [line for line in logs if line["level"] == "WARNING"]
    assert (warning["sequence_number"], warning["event_id"]) == ("222", event["Records"][1]["eventID"])
    assert "RuntimeError: cannot handle ax-5e1f0c2a9b3d4e6f" in warning["exception"]
    assert "Traceback" in warning["exception"]


def test_a_batch_that_all_failed_raises_after_handling_every_record():
    event = {"Records": [stream_record("111", "bad"), stream_record("222", "bad")]}
    handler = Handler()

    failed = r"All records failed processing\. 2 individual"
    with pytest.raises(BatchProcessingError, match=failed) as ours_err:
        process_stream_batch(copy.deepcopy(event), handler, fresh_logger(io.StringIO()))
    assert handler.seen == ["bad", "bad"]
    # Powertools raises the same, with each record's traceback in the message
    with pytest.raises(BatchProcessingError) as theirs:
        powertools(copy.deepcopy(event))
    assert str(ours_err.value).count("RuntimeError: cannot handle") == 2
    assert str(ours_err.value).splitlines()[0] == str(theirs.value).splitlines()[0]


def test_a_failed_record_without_a_sequence_number_fails_the_whole_batch_in_lambda():
    # Lambda reads a null itemIdentifier as the whole batch failing (so nothing is skipped); Powertools
    # reports the same null. A record without one that succeeds is just handled.
    event = {"Records": [stream_record(None, "ok"), stream_record(None, "bad"), stream_record("333", "ok")]}

    response, seen, logs = ours(copy.deepcopy(event))

    assert seen == ["ok", "bad", "ok"]
    assert response == {"batchItemFailures": [{"itemIdentifier": None}]}
    assert (response, seen) == powertools(copy.deepcopy(event))
    (warning,) = [line for line in logs if line["level"] == "WARNING"]
    assert "sequence_number" not in warning
    assert warning["event_id"] == event["Records"][1]["eventID"]


@pytest.mark.parametrize("event", [{"Records": []}, {}], ids=["empty Records", "no Records"])
def test_an_empty_batch_is_refused_as_powertools_refuses_it(event):
    handler = Handler()
    with pytest.raises(UnexpectedBatchTypeError, match="Unexpected batch event type"):
        process_stream_batch(event, handler, fresh_logger(io.StringIO()))
    with pytest.raises(UnexpectedBatchTypeError, match="Unexpected batch event type"):
        powertools(event)
    assert handler.seen == []


def test_a_batch_that_succeeded_reports_nothing():
    event = {"Records": [stream_record("111", "ok"), stream_record("222", "ok")]}

    assert ours(copy.deepcopy(event))[:2] == ({"batchItemFailures": []}, ["ok", "ok"])
    assert powertools(copy.deepcopy(event)) == ({"batchItemFailures": []}, ["ok", "ok"])


@pytest.mark.parametrize("name", ["launch-insert.json", "launch-modify-running.json"])
def test_images_decode_as_powertools_decodes_them(name):
    for raw in json.loads((EVENTS / name).read_text())["Records"]:
        raw["dynamodb"]["NewImage"]["sizes"] = {"NS": ["1", "2.50"]}
        raw["dynamodb"]["NewImage"]["zones"] = {"SS": ["a", "b"]}
        raw["dynamodb"]["NewImage"]["gone"] = {"NULL": True}
        ours_record, theirs = StreamRecord(raw), DynamoDBRecord(raw)
        change = theirs.dynamodb
        assert change is not None
        assert ours_record.event_name == raw["eventName"]
        assert ours_record.sequence_number == change.sequence_number
        assert ours_record.keys == change.keys
        assert ours_record.new_image == change.new_image
        assert ours_record.old_image == change.old_image
        assert ours_record.new_image["sizes"] == {1, 2.5}
