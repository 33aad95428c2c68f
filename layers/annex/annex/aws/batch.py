"""Partial batch responses (ReportBatchItemFailures) for a DynamoDB stream event source, as Powertools'
`BatchProcessor(EventType.DynamoDBStreams)` + `process_partial_response` answer them (v3.37.0):

- every record goes to the record handler, whatever happened to the ones before it;
- a record whose handler raised is reported as `{"itemIdentifier": <its dynamodb.SequenceNumber>}`, and
  logged (a warning with its sequence number, event id and traceback); a failed record without a
  SequenceNumber is reported with a null identifier, which Lambda reads as the whole batch failing (AWS:
  "Configuring partial batch response with DynamoDB and Lambda", success and failure conditions);
- when every record failed, `BatchProcessingError` ("All records failed processing. ...") is raised, so
  Lambda retries the batch (Powertools' `raise_on_entire_batch_failure=True`, the default);
- an event without records (an empty or missing `Records` list) raises `UnexpectedBatchTypeError`.

Why not Powertools' own: `aws_lambda_powertools.utilities.batch` imports every event data class and
asyncio, about 40 ms of the launch and notices functions' cold start (bench/bench_coldstart.py), for a loop
of twenty lines. Its exception types are kept (what Lambda logs as the error type, and what callers
catch); they are imported only when a batch fails as a whole, which no successful invocation pays.
Record images are decoded by `annex.aws.attribute_values` (boto3's rules; Powertools' decoder differs
only on numbers written with more than 38 digits, or empty, which the store never writes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from types import TracebackType
from typing import Any, Protocol, TypedDict

from annex.aws.attribute_values import TypeDeserializer

_de = TypeDeserializer()


class BatchItemFailure(TypedDict):
    itemIdentifier: str | None


class PartialItemFailureResponse(TypedDict):
    batchItemFailures: list[BatchItemFailure]


class _Logger(Protocol):
    def warning(self, msg: str, *, exc_info: bool, extra: dict[str, Any]) -> object: ...


class StreamRecord:
    """One DynamoDB stream record as Lambda delivers it; the images decoded on first use (a record whose
    image cannot be decoded fails in the record handler, as with Powertools' `DynamoDBRecord`)."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self._change: Mapping[str, Any] = raw.get("dynamodb") or {}

    @property
    def event_name(self) -> Any:
        """`INSERT`, `MODIFY` or `REMOVE` as delivered (unchecked: the triggers validate it)."""
        return self.raw.get("eventName")

    @property
    def event_id(self) -> str | None:
        return self.raw.get("eventID")

    @property
    def sequence_number(self) -> str | None:
        return self._change.get("SequenceNumber")

    def _decoded(self, field: str) -> dict[str, Any]:
        return {k: _de.deserialize(v) for k, v in (self._change.get(field) or {}).items()}

    @cached_property
    def keys(self) -> dict[str, Any]:
        return self._decoded("Keys")

    @cached_property
    def new_image(self) -> dict[str, Any]:
        return self._decoded("NewImage")

    @cached_property
    def old_image(self) -> dict[str, Any]:
        return self._decoded("OldImage")


# As Powertools' ExceptionInfo (a sys.exc_info() triple).
ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


def process_stream_batch(
    event: Mapping[str, Any], record_handler: Callable[[StreamRecord], object], logger: _Logger
) -> PartialItemFailureResponse:
    """Run `record_handler` on every record of a DynamoDB stream event; the partial batch response."""
    records = event.get("Records")
    if not records or not isinstance(records, list):
        # Only a malformed invocation gets here (Lambda never delivers an empty batch).
        from aws_lambda_powertools.utilities.batch.exceptions import (  # noqa: PLC0415 (cold start: error path)
            UnexpectedBatchTypeError,
        )

        raise UnexpectedBatchTypeError(
            "Unexpected batch event type. Possible values are: "
            "SQS, KinesisDataStreams, DynamoDBStreams, Kafka"
        )
    failures: list[BatchItemFailure] = []
    errors: list[ExcInfo] = []
    for raw in records:
        record = StreamRecord(raw)
        try:
            record_handler(record)
        except Exception as exc:
            errors.append((type(exc), exc, exc.__traceback__))
            failures.append({"itemIdentifier": record.sequence_number})
            logger.warning(
                "Record processing exception; reported for retry",
                exc_info=True,
                extra={"sequence_number": record.sequence_number, "event_id": record.event_id},
            )
    if failures and len(failures) == len(records):
        from aws_lambda_powertools.utilities.batch.exceptions import (  # noqa: PLC0415 (cold start: error path)
            BatchProcessingError,
        )

        raise BatchProcessingError(
            msg=f"All records failed processing. {len(errors)} individual errors logged separately below.",
            child_exceptions=errors,
        )
    return {"batchItemFailures": failures}
