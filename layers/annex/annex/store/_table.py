"""The table itself: the key layout, item (de)serialisation, batched reads and transactions built from
named operations. Private to the store package: nothing outside it knows a key or a raw item.

Item layout (one table, `pk`/`sk`):

| item          | pk               | sk                    | indexes                                  |
|---------------|------------------|-----------------------|------------------------------------------|
| annex         | ANNEX#<id>       | META                  | by-owner, all-annexes, due (lease, live) |
| instance      | ANNEX#<id>       | INST#<instance-id>    | due (reap, until recorded terminated)    |
| history event | ANNEX#<id>       | EVENT#<time>#<seq>    |                                          |
| name lock     | OWNER#<arn>      | NAME#<name>           | (exists while the annex is live)         |
| client token  | OWNER#<arn>      | TOKEN#<token>         |                                          |
| quota         | OWNER#<arn>      | QUOTA                 | `live`: instances held by live annexes   |
| stack quota   | STACK            | QUOTA                 | `live`: the same, all owners (one item)  |
| sweep status  | SWEEP#<name>     | STATUS                |                                          |
| timers armed  | SWEEP#<name>     | TIMERS                | `armed_through`: lease timers sent       |
| price         | PRICE#<region>   | <market>#<type>       | (store/prices.py)                        |
| annex budget  | ANNEX#<id>       | BUDGET                | due (budget, live budgeted annexes)      |
| owner budget  | OWNER#<arn>      | BUDGET                | (store/budgets.py)                       |
| notice sent   | ANNEX#<id>       | NOTICE#<kind>#<when>  | (store/notices.py)                       |

The `due` index is write-sharded: an item's `due_kind` is `<kind>#<shard>` (`reap#07`), the shard a stable
hash of the item's own key (`due_shard`), so the fleet's index writes spread over `DUE_SHARDS` partition
keys; the sweeps query every shard (store/due.py; the sizing is in docs/scale.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from annex.aws.attribute_values import TypeDeserializer, TypeSerializer
from annex.core.errors import PolicyViolation, Throttled

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from annex.store.history import History

META = "META"
QUOTA = "QUOTA"
STACK = "STACK"
STATUS = "STATUS"
TIMERS = "TIMERS"
DUE_LEASE = "lease"
DUE_REAP = "reap"
# Partition keys of the `due` index per kind. 100,000 instances heartbeating every 60 s are 1,667 writes/s;
# even if every one moved its index entry (2 index writes each: delete + put) that is 3,333 WCU/s, or
# about 210 on the fullest shard: 4.7x under DynamoDB's 1,000 WCU/s per partition key (docs/scale.md).
DUE_SHARDS = 16
INDEX_BY_OWNER = "by-owner"
INDEX_ALL = "all-annexes"
INDEX_DUE = "due"
TRANSACTION_LIMIT = 100  # items in one TransactWriteItems
BATCH_GET_MAX = 100  # keys per BatchGetItem request (the API's limit)
BATCH_GET_ATTEMPTS = 6
# Item attributes that are not fields of the domain models.
STORAGE_ONLY = frozenset(
    {"pk", "sk", "kind", "created_key", "due_kind", "due_at", "held", "expires_at", "fingerprint"}
)
Key = tuple[str, str]
_ser = TypeSerializer()
_de = TypeDeserializer()


def annex_pk(annex_id: str) -> str:
    return f"ANNEX#{annex_id}"


def annex_id_of(pk: str) -> str:
    return pk.removeprefix("ANNEX#")


def owner_pk(owner: str) -> str:
    return f"OWNER#{owner}"


def instance_sk(instance_id: str) -> str:
    return f"INST#{instance_id}"


def name_sk(name: str) -> str:
    return f"NAME#{name}"


def token_sk(token: str) -> str:
    return f"TOKEN#{token}"


def sweep_pk(name: str) -> str:
    return f"SWEEP#{name}"


def due_shard(kind: str, pk: str, sk: str) -> str:
    """The `due` index partition key of the item (pk, sk): its kind and a shard derived from a stable
    hash (CRC-32) of its own key, so an item stays in one shard for its life."""
    return f"{kind}#{zlib.crc32(f'{pk}|{sk}'.encode()) % DUE_SHARDS:02d}"


def due_partitions(kind: str) -> list[str]:
    """Every `due` partition key of a kind the sweeps must query: its shards, and the unsharded key items
    written before sharding may still carry (the migration, docs/scale.md)."""
    return [f"{kind}#{shard:02d}" for shard in range(DUE_SHARDS)] + [kind]


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_plain(v) for v in value]
    return value


def to_attrs(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in data.items() if v is not None}


def from_attrs(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


def model_fields(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in STORAGE_ONLY}


def key_attrs(pk: str, sk: str) -> dict[str, Any]:
    return to_attrs({"pk": pk, "sk": sk})


def in_clause(prefix: str, values: Iterable[str]) -> tuple[str, dict[str, Any]]:
    """`(:p0, :p1, ...)` and its values, for a condition `#x IN (...)`."""
    named = {f":{prefix}{i}": v for i, v in enumerate(sorted(values))}
    return f"({', '.join(named)})", named


def encode_page_token(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode()


def decode_page_token(token: str | None) -> dict[str, Any] | None:
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error) as exc:
        raise PolicyViolation("next_token is not a token this API returned", field="next_token") from exc
    if not isinstance(key, dict) or not all(isinstance(v, dict) for v in key.values()):
        raise PolicyViolation("next_token is not a token this API returned", field="next_token")
    return key


class Cancelled(Exception):
    """A transaction was cancelled; read why by the names its operations were given."""

    def __init__(self, codes: dict[str, str]) -> None:
        super().__init__(", ".join(f"{name}: {code}" for name, code in codes.items()))
        self.codes = codes

    def failed(self, name: str) -> bool:
        """The condition of the operation called `name` did not hold."""
        return self.codes.get(name) == "ConditionalCheckFailed"

    @property
    def conflict(self) -> bool:
        return "TransactionConflict" in self.codes.values()


class Transaction:
    """A TransactWriteItems built from named operations, so a cancellation is read by name."""

    def __init__(self, table_name: str) -> None:
        self.table_name = table_name
        self._ops: list[tuple[str, dict[str, Any]]] = []

    def _add(self, name: str, kind: str, body: dict[str, Any]) -> Transaction:
        if any(existing == name for existing, _ in self._ops):
            raise ValueError(f"operation {name!r} is already in this transaction")
        self._ops.append((name, {kind: {"TableName": self.table_name, **body}}))
        return self

    def put(self, name: str, item: dict[str, Any], *, condition: str | None = None) -> Transaction:
        body: dict[str, Any] = {"Item": to_attrs(item)}
        if condition:
            body["ConditionExpression"] = condition
        return self._add(name, "Put", body)

    def update(
        self,
        name: str,
        key: Key,
        update: str,
        *,
        condition: str | None = None,
        names: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
    ) -> Transaction:
        body: dict[str, Any] = {"Key": key_attrs(*key), "UpdateExpression": update}
        if condition:
            body["ConditionExpression"] = condition
        if names:
            body["ExpressionAttributeNames"] = names
        if values:
            body["ExpressionAttributeValues"] = to_attrs(values)
        return self._add(name, "Update", body)

    def delete(
        self, name: str, key: Key, *, condition: str | None = None, values: dict[str, Any] | None = None
    ) -> Transaction:
        body: dict[str, Any] = {"Key": key_attrs(*key)}
        if condition:
            body["ConditionExpression"] = condition
        if values:
            body["ExpressionAttributeValues"] = to_attrs(values)
        return self._add(name, "Delete", body)

    def commit(self, client: DynamoDBClient) -> None:
        """Raises Cancelled (with each operation's code, by name) if DynamoDB cancelled it."""
        try:
            client.transact_write_items(TransactItems=[op for _, op in self._ops])  # type: ignore[misc]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons") or []
            codes = {
                name: (reason.get("Code") or "None")
                for (name, _), reason in zip(self._ops, reasons, strict=False)
            }
            raise Cancelled(codes) from exc


@dataclass
class Table:
    """The DynamoDB client and table every record family reads and writes, with the read counter the
    sweep metrics and benchmarks report, and the sleep used between throttled batch reads."""

    client: DynamoDBClient
    name: str
    sleep: Callable[[float], None]
    items_read: int = 0

    def transaction(self) -> Transaction:
        return Transaction(self.name)

    def get(self, key: Key, *, consistent: bool = True) -> dict[str, Any] | None:
        resp = self.client.get_item(TableName=self.name, Key=key_attrs(*key), ConsistentRead=consistent)
        self.items_read += 1
        return from_attrs(resp["Item"]) if "Item" in resp else None

    def put(self, item: dict[str, Any], *, condition: str | None = None) -> bool:
        """False if `condition` did not hold."""
        kwargs: dict[str, Any] = {"TableName": self.name, "Item": to_attrs(item)}
        if condition:
            kwargs["ConditionExpression"] = condition
        try:
            self.client.put_item(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def update(
        self,
        key: Key,
        update: str,
        *,
        condition: str,
        names: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
    ) -> bool:
        """A conditional UpdateItem; False if the condition did not hold."""
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "Key": key_attrs(*key),
            "UpdateExpression": update,
            "ConditionExpression": condition,
        }
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if values:
            kwargs["ExpressionAttributeValues"] = to_attrs(values)
        try:
            self.client.update_item(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paginated Query."""
        kwargs = {"TableName": self.name, **kwargs}
        while True:
            resp = self.client.query(**kwargs)
            self.items_read += len(resp.get("Items", []))
            yield from (from_attrs(i) for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def query_partition(self, pk: str, sk_prefix: str | None = None) -> Iterator[dict[str, Any]]:
        values = {":pk": pk}
        condition = "pk = :pk"
        if sk_prefix:
            condition += " AND begins_with(sk, :p)"
            values[":p"] = sk_prefix
        return self.query(
            KeyConditionExpression=condition, ExpressionAttributeValues=to_attrs(values), ConsistentRead=True
        )

    def get_many(self, keys: Iterable[Key], *, consistent: bool = True) -> dict[Key, dict[str, Any]]:
        """BatchGetItem (strongly consistent unless told: an eventually consistent read costs half), 100
        keys per request; missing keys are absent from the result. Unprocessed keys (throttling) are
        retried with capped backoff."""
        wanted = sorted(set(keys))
        found: dict[Key, dict[str, Any]] = {}
        for start in range(0, len(wanted), BATCH_GET_MAX):
            request: dict[str, Any] = {
                self.name: {
                    "Keys": [key_attrs(pk, sk) for pk, sk in wanted[start : start + BATCH_GET_MAX]],
                    "ConsistentRead": consistent,
                }
            }
            for attempt in range(BATCH_GET_ATTEMPTS):
                resp = self.client.batch_get_item(RequestItems=request)
                items = resp.get("Responses", {}).get(self.name, [])
                self.items_read += len(items)
                for raw in items:
                    item = from_attrs(raw)
                    found[(item["pk"], item["sk"])] = item
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
                self.sleep(min(0.05 * 2**attempt, 1.0))
            else:
                raise Throttled("DynamoDB kept some reads unprocessed; the next sweep will retry")
        return found


class StoreBase:
    """What every record family of the store shares: the table and the history writer (set by
    AnnexStore's constructor)."""

    _table: Table
    _history: History

    @property
    def table_name(self) -> str:
        return self._table.name

    @property
    def items_read(self) -> int:
        """Read units of work so far, for the sweep metrics and benchmarks."""
        return self._table.items_read
