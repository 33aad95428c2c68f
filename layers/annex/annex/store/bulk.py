"""Bulk loading, for benchmarks and seeded test tables only: BatchWriteItem, with no condition.

Each annex is written with its name lock (while live), its instances (with their reap time) and one held
unit per instance, and each owner's quota total is the sum of their annexes' held units, so the quota
invariant holds for what is loaded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from annex.core.models import Annex, Instance
from annex.store import AnnexStore, quota
from annex.store._table import name_sk, owner_pk, to_attrs
from annex.store.annexes import annex_item
from annex.store.instances import instance_item

BATCH_WRITE_MAX = 25  # items per BatchWriteItem request (the API's limit)


def load(
    store: AnnexStore, annexes: Iterable[tuple[Annex, Sequence[tuple[Instance, datetime | None]]]]
) -> int:
    """Write the annexes and their (instance, reap time) pairs. Returns how many items were written."""
    items: list[dict[str, Any]] = []
    live: Counter[str] = Counter()
    for annex, instances in annexes:
        held = len(instances) if annex.live else 0
        items.append(annex_item(annex, held=held))
        if annex.live:
            items.append({"pk": owner_pk(annex.owner), "sk": name_sk(annex.name), "annex_id": annex.id})
        live[annex.owner] += held
        items += [instance_item(instance, reap_at=reap_at) for instance, reap_at in instances]
    for owner, units in live.items():
        pk, sk = quota.quota_key(owner)
        items.append({"pk": pk, "sk": sk, quota.LIVE: units})
    pk, sk = quota.stack_quota_key()
    items.append({"pk": pk, "sk": sk, quota.LIVE: sum(live.values())})
    client, table = store._table.client, store.table_name  # the store package's own table
    for start in range(0, len(items), BATCH_WRITE_MAX):
        batch = [{"PutRequest": {"Item": to_attrs(item)}} for item in items[start : start + BATCH_WRITE_MAX]]
        client.batch_write_item(RequestItems={table: batch})  # type: ignore[dict-item]
    return len(items)
