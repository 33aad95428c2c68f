"""The annex table (DynamoDB): every read and write of it, and nothing else knows its layout.

Every state change is a conditional write; ClientError codes become domain exceptions here. Callers get
typed records (`records.py`), never items or keys. One module per record family:

- `annexes`: annexes with their name lock, client token and quota reservation;
- `instances`: instance records, heartbeats, and their termination (one quota unit back, exactly once);
- `quota`: the only writer of the quota invariant (QUOTA.live = the sum of the annexes' held units);
- `prices`: instance prices per region, type and market; `budgets`: when each budgeted annex is due
  for the budget check, and each owner's monthly budget; `notices`: which notices went out;
- `ledger`: each owner's open annexes and month ledger (what their ended annexes ran), for admission;
- `history`: history events; `sweep_status`: when each sweep last succeeded; `due`: the sparse index
  the sweeps read; `keys`: the API's page-token key;
- `_table`: the key layout, items, batched reads, and transactions built from named operations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from annex.store._table import Table
from annex.store.annexes import AnnexRecords
from annex.store.budgets import BudgetDue, BudgetRecords, OwnerBudgetRecord
from annex.store.due import DueIndex
from annex.store.history import History, Ticks
from annex.store.instances import InstanceRecords
from annex.store.keys import KeyRecords
from annex.store.ledger import LedgerRecords, OwnerLedger
from annex.store.notices import NoticeRecords
from annex.store.prices import PriceRecords
from annex.store.records import (
    AnnexRecord,
    HeartbeatVersion,
    InstanceEnd,
    InstanceKey,
    InstanceRecord,
    ReplacementClaim,
    TokenRecord,
    TokenTaken,
)
from annex.store.sweep_status import SweepStatusRecords

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = [
    "AnnexRecord",
    "AnnexStore",
    "BudgetDue",
    "HeartbeatVersion",
    "InstanceEnd",
    "InstanceKey",
    "InstanceRecord",
    "OwnerBudgetRecord",
    "OwnerLedger",
    "ReplacementClaim",
    "TokenRecord",
    "TokenTaken",
]


class AnnexStore(
    AnnexRecords,
    InstanceRecords,
    SweepStatusRecords,
    DueIndex,
    PriceRecords,
    BudgetRecords,
    NoticeRecords,
    KeyRecords,
    LedgerRecords,
):
    """All reads and writes of the annex table. `sleep` waits between throttled batch reads; `ticks`
    orders history events within a second (both injected so tests need not patch modules)."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        ticks: Ticks = time.time_ns,
    ) -> None:
        self._table = Table(client, table_name, sleep)
        self._history = History(self._table, ticks)
