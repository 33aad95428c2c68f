"""annex.aws.attribute_values encodes and decodes exactly as boto3.dynamodb.types does (the store used
boto3's codec until cold starts made it too dear), on the values the store writes and on the edge cases
boto3 refuses."""

from __future__ import annotations

from decimal import Decimal

import pytest
from annex.aws.attribute_values import TypeDeserializer, TypeSerializer
from boto3.dynamodb.types import Binary
from boto3.dynamodb.types import TypeDeserializer as Boto3Deserializer
from boto3.dynamodb.types import TypeSerializer as Boto3Serializer

VALUES = [
    None,
    True,
    False,
    0,
    -7,
    2**63,
    10**37,
    Decimal("0.001"),
    Decimal("12.50"),
    Decimal("-1E+5"),
    Decimal("1E-130"),
    "",
    "ax-0123456789abcdef",
    "ünïcode ✓",
    b"\x00\xff",
    bytearray(b"ab"),
    {"c7i.xlarge", "m7g.large"},
    {1, Decimal("2.5"), 3},
    {b"a", b"b"},
    set(),
    [],
    (1, "a"),
    {},
    # the shape of an annex item: nested maps and lists of mixed values
    {
        "pk": "ANNEX#ax-1",
        "count": 3,
        "tags": {"team": "physics", "annex-sim": "busy"},
        "subnets": ["subnet-1", "subnet-2"],
        "budget": Decimal("99.99"),
        "live": True,
        "ended": None,
        "nested": [{"a": [1, [2, {"b": None}]]}],
    },
]

REFUSED = [
    1.5,
    float("nan"),
    Decimal("NaN"),
    Decimal("Infinity"),
    Decimal("1.234567890123456789012345678901234567891"),  # 40 digits: Inexact/Rounded
    Decimal("1E+200"),  # Overflow
    {1.5},
    object(),
    {"a", 1},  # a set of mixed types
]


def _plain(value: object) -> object:
    """boto3 wraps binaries in Binary; ours are bytes (documented). Compare their bytes."""
    if isinstance(value, Binary):
        return bytes(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return {_plain(v) for v in value}
    return value


def _sorted_sets(attr: object) -> object:
    """Set members come out in set order; compare them sorted."""
    if isinstance(attr, dict):
        return {
            k: sorted(v, key=repr) if k in ("SS", "NS", "BS") else _sorted_sets(v) for k, v in attr.items()
        }
    if isinstance(attr, list):
        return [_sorted_sets(v) for v in attr]
    return attr


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_encodes_as_boto3_does(value: object) -> None:
    assert _sorted_sets(TypeSerializer().serialize(value)) == _sorted_sets(Boto3Serializer().serialize(value))


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_decodes_as_boto3_does(value: object) -> None:
    attr = Boto3Serializer().serialize(value)
    ours = TypeDeserializer().deserialize(attr)
    theirs = Boto3Deserializer().deserialize(attr)
    assert _plain(ours) == _plain(theirs)
    assert type(ours) is type(_plain(theirs)) or isinstance(theirs, Binary)


@pytest.mark.parametrize("value", REFUSED, ids=repr)
def test_refuses_what_boto3_refuses(value: object) -> None:
    with pytest.raises((TypeError, ArithmeticError)) as theirs:
        Boto3Serializer().serialize(value)
    with pytest.raises(type(theirs.value)):
        TypeSerializer().serialize(value)


def test_an_unknown_or_empty_attribute_is_refused() -> None:
    for attr in ({}, {"X": "1"}):
        with pytest.raises(TypeError):
            Boto3Deserializer().deserialize(attr)
        with pytest.raises(TypeError):
            TypeDeserializer().deserialize(attr)
