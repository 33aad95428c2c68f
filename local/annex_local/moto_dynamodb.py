"""TransactWriteItems in the embedded moto without copying the whole table (the local stack only).

moto (5.2) backs up every table a transaction touches with `copy.deepcopy(table)` (once per operation of
the transaction) so it can roll back. The cost grows with the table: on the local stack, where the table
holds the price snapshot, every annex's history and every instance, one transaction took ~0.75 s of the
embedded AWS's one-request-at-a-time gate (bench/bench_lease_lag.py measured 122 transactions holding it
92 s of 177 s), and every other call, lease timers included, waited behind them. DynamoDB itself answers a
transaction in milliseconds, whatever the table's size.

`install()` keeps moto's own implementation (conditions, errors, cancellation reasons, stream records)
and replaces only its backup: before the transaction, a copy of each item it names (and the length of
the table's stream); on any error, those items are put back as they were and the stream records it added
are dropped, which is the state moto's full copy would restore. Tables the transaction does not name are
never touched by it, so copying them bought nothing.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import moto.dynamodb.models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

_state = threading.local()
_original: Callable[..., Any] | None = None


class _CopyWithoutTables(ModuleType):
    """moto's `copy` module as its DynamoDB models see it: `deepcopy(table)` is the table itself while a
    transaction runs under `install()` (its rollback then reassigns the same object), anything else is
    copied as before."""

    def __init__(self) -> None:
        super().__init__("copy")
        self.copy = copy.copy

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        if getattr(_state, "transaction", False) and isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)


class _Journal:
    """The items a transaction names, as they were before it, and each touched table's stream length."""

    def __init__(self, backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        self.items: list[tuple[Table, DynamoType, DynamoType | None, Any]] = []
        self.streams: dict[int, tuple[Any, int]] = {}
        for entry in transact_items:
            if not isinstance(entry, dict) or len(entry) != 1:
                continue
            op = next(iter(entry.values()))
            name = op.get("TableName") if isinstance(op, dict) else None
            table = backend.tables.get(name) if isinstance(name, str) else None
            key = (op.get("Key") or op.get("Item")) if table is not None else None
            if table is None or not isinstance(key, dict) or table.hash_key_attr not in key:
                continue
            hash_value = DynamoType(key[table.hash_key_attr])
            range_value = None
            if table.range_key_attr is not None:
                if table.range_key_attr not in key:
                    continue
                range_value = DynamoType(key[table.range_key_attr])
            self.items.append(
                (table, hash_value, range_value, copy.deepcopy(_current(table, hash_value, range_value)))
            )
            if table.stream_shard is not None and id(table) not in self.streams:
                self.streams[id(table)] = (table.stream_shard, len(table.stream_shard.items))

    def restore(self) -> None:
        for table, hash_value, range_value, before in reversed(self.items):
            if range_value is None:
                if before is None:
                    table.items.pop(hash_value, None)
                else:
                    table.items[hash_value] = before
            elif before is None:
                table.items.get(hash_value, {}).pop(range_value, None)
            else:
                table.items[hash_value][range_value] = before
        for shard, length in self.streams.values():
            del shard.items[length:]


def _current(table: Table, hash_value: DynamoType, range_value: DynamoType | None) -> Any:
    if range_value is None:
        return table.items.get(hash_value)
    return table.items.get(hash_value, {}).get(range_value)


def install() -> None:
    """Patch moto in this process (idempotent)."""
    global _original  # noqa: PLW0603 - one patch per process
    if _original is not None:
        return
    original = _original = DynamoDBBackend.transact_write_items

    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        journal = _Journal(self, transact_items)
        _state.transaction = True
        try:
            original(self, transact_items)
        except BaseException:
            journal.restore()
            raise
        finally:
            _state.transaction = False

    dynamodb_models.copy = _CopyWithoutTables()  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def uninstall() -> None:
    """Put moto back as it was (for tests)."""
    global _original  # noqa: PLW0603
    if _original is None:
        return
    DynamoDBBackend.transact_write_items = _original  # type: ignore[method-assign]
    dynamodb_models.copy = copy  # type: ignore[attr-defined]
    _original = None
