"""DynamoDB attribute values (`{"S": "x"}`, `{"N": "3"}`, ...) to and from Python values, by the rules of
`boto3.dynamodb.types` (numbers in DynamoDB's decimal context, no floats, sets by element type).

Why not boto3's own: importing `boto3.dynamodb.types` runs `boto3/__init__`, which imports s3transfer and
multiprocessing — about 30 ms of every cold start for a codec of a hundred lines (bench/bench_coldstart.py).
The functions create their clients from botocore directly (annex.aws.clients), so nothing else needs
boto3. tests/unit/test_attribute_values.py checks this module against boto3's on the values we store.
One difference: a binary value (`B`, `BS`) comes back as `bytes`, not boto3's `Binary` wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from decimal import Clamped, Context, Decimal, Inexact, Overflow, Rounded, Underflow
from typing import Any

# DynamoDB's number type: 38 digits of precision, exponents -130..125 (boto3's DYNAMODB_CONTEXT).
DYNAMODB_CONTEXT = Context(
    Emin=-128,
    Emax=126,
    prec=38,
    traps=[Clamped, Overflow, Inexact, Rounded, Underflow],
)
_BINARY = (bytes, bytearray)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def _set_number(value: Any) -> bool:
    if isinstance(value, float):
        raise TypeError("Float types are not supported. Use Decimal types instead.")
    return isinstance(value, int | Decimal)


def _number(value: int | Decimal) -> str:
    text = str(DYNAMODB_CONTEXT.create_decimal(value))
    if text in ("Infinity", "NaN"):
        raise TypeError("Infinity and NaN not supported")
    return text


class TypeSerializer:
    def serialize(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {"NULL": True}
        if isinstance(value, bool):
            return {"BOOL": value}
        if isinstance(value, float):
            raise TypeError("Float types are not supported. Use Decimal types instead.")
        if _is_number(value):
            return {"N": _number(value)}
        if isinstance(value, str):
            return {"S": value}
        if isinstance(value, _BINARY):
            return {"B": value}
        if isinstance(value, Set):
            # As boto3 classifies sets (an empty one is a number set, which DynamoDB refuses).
            if all(_set_number(v) for v in value):
                return {"NS": [_number(v) for v in value]}
            if all(isinstance(v, str) for v in value):
                return {"SS": list(value)}
            if all(isinstance(v, _BINARY) for v in value):
                return {"BS": list(value)}
        if isinstance(value, Mapping):
            return {"M": {k: self.serialize(v) for k, v in value.items()}}
        if isinstance(value, list | tuple):
            return {"L": [self.serialize(v) for v in value]}
        raise TypeError(f"Unsupported type {type(value)} for value {value!r}")


class TypeDeserializer:
    def deserialize(self, value: dict[str, Any]) -> Any:
        if not value:
            raise TypeError("Value must be a nonempty dictionary whose key is a valid dynamodb type.")
        kind, data = next(iter(value.items()))
        match kind:
            case "NULL":
                return None
            case "BOOL" | "S":
                return data
            case "N":
                return DYNAMODB_CONTEXT.create_decimal(data)
            case "B":
                return bytes(data)
            case "SS":
                return set(data)
            case "NS":
                return {DYNAMODB_CONTEXT.create_decimal(v) for v in data}
            case "BS":
                return {bytes(v) for v in data}
            case "L":
                return [self.deserialize(v) for v in data]
            case "M":
                return {k: self.deserialize(v) for k, v in data.items()}
        raise TypeError(f"Dynamodb type {kind} is not supported")
