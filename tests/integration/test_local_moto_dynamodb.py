"""The local stack's TransactWriteItems (annex_local.moto_dynamodb): moto's own semantics, without its
copy of the whole table per transaction (which made each one take ~0.75 s on the local stack)."""

from __future__ import annotations

import boto3
import pytest
from annex_local import moto_dynamodb
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.models import dynamodb_backends

TABLE = "t"


@pytest.fixture
def ddb():
    with mock_aws():
        moto_dynamodb.install()
        try:
            client = boto3.client("dynamodb", region_name="us-east-1")
            client.create_table(
                TableName=TABLE,
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                BillingMode="PAY_PER_REQUEST",
                StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
            )
            yield client
        finally:
            moto_dynamodb.uninstall()


def put(pk: str, sk: str, **attrs: str) -> dict:
    return {
        "Put": {
            "TableName": TABLE,
            "Item": {"pk": {"S": pk}, "sk": {"S": sk}, **{k: {"S": v} for k, v in attrs.items()}},
        }
    }


def items(client) -> dict[tuple[str, str], dict]:
    return {(i["pk"]["S"], i["sk"]["S"]): i for i in client.scan(TableName=TABLE)["Items"]}


def stream_length() -> int:
    table = dynamodb_backends["123456789012"]["us-east-1"].tables[TABLE]
    return len(table.stream_shard.items)


def test_a_cancelled_transaction_changes_nothing_and_leaves_no_stream_record(ddb):
    # Given an item, and the table as it is
    ddb.put_item(TableName=TABLE, Item={"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"S": "old"}})
    ddb.put_item(TableName=TABLE, Item={"pk": {"S": "b"}, "sk": {"S": "1"}, "v": {"S": "kept"}})
    before, records = items(ddb), stream_length()
    table = dynamodb_backends["123456789012"]["us-east-1"].tables[TABLE]

    # When a transaction updates it, inserts another, deletes a third, then fails a condition
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": TABLE,
                        "Key": {"pk": {"S": "a"}, "sk": {"S": "1"}},
                        "UpdateExpression": "SET v = :n",
                        "ExpressionAttributeValues": {":n": {"S": "new"}},
                    }
                },
                put("c", "1", v="inserted"),
                {"Delete": {"TableName": TABLE, "Key": {"pk": {"S": "b"}, "sk": {"S": "1"}}}},
                {
                    **put("d", "1"),
                    "Put": {**put("d", "1")["Put"], "ConditionExpression": "attribute_exists(pk)"},
                },
            ]
        )

    # Then it is cancelled as DynamoDB cancels it, and the table and its stream are as before
    assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in caught.value.response["CancellationReasons"]] == [
        "None",
        "None",
        "None",
        "ConditionalCheckFailed",
    ]
    assert items(ddb) == before
    assert stream_length() == records
    # without a copy of the table (the copy is what cost seconds)
    assert dynamodb_backends["123456789012"]["us-east-1"].tables[TABLE] is table


def test_a_transaction_that_holds_applies_every_operation_and_streams_them(ddb):
    ddb.put_item(TableName=TABLE, Item={"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"S": "old"}})
    records = stream_length()

    ddb.transact_write_items(
        TransactItems=[
            put("a", "1", v="new"),
            put("c", "1", v="inserted"),
        ]
    )

    assert {k: v["v"]["S"] for k, v in items(ddb).items()} == {("a", "1"): "new", ("c", "1"): "inserted"}
    assert stream_length() == records + 2


def test_the_same_item_twice_is_refused_and_changes_nothing(ddb):
    ddb.put_item(TableName=TABLE, Item={"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"S": "old"}})
    before = items(ddb)

    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(TransactItems=[put("a", "1", v="x"), put("a", "1", v="y")])

    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert items(ddb) == before
