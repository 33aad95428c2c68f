"""Instance records are written in transactions of up to 100, and a resumed launch never overwrites
a record that already exists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from annex.aws import clients
from annex.core.models import Instance, InstanceState, Market
from annex.store import AnnexStore

from tests.integration.conftest import TABLE

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ANNEX = "ax-00000000000000aa"


def instance(n: int, state: InstanceState = InstanceState.PENDING) -> Instance:
    return Instance(
        instance_id=f"i-{n:017x}",
        annex_id=ANNEX,
        instance_type="c7i.xlarge",
        zone="us-east-1a",
        market=Market.ON_DEMAND,
        state=state,
        launched_at=NOW,
    )


def count_calls(client, operation: str) -> list[int]:
    calls: list[int] = []
    client.meta.events.register(f"before-call.dynamodb.{operation}", lambda **_: calls.append(1))
    return calls


def test_250_records_take_3_transactions_and_a_resume_keeps_what_exists(ddb):
    clients.client.cache_clear()
    db = clients.dynamodb()
    store = AnnexStore(db, TABLE)
    transactions = count_calls(db, "TransactWriteItems")
    puts = count_calls(db, "PutItem")

    # A first run recorded instance 0 and already saw it heartbeat (running).
    store.put_instances([instance(0, InstanceState.RUNNING)], reap_at=NOW + timedelta(minutes=15))
    # The resumed launch records all 250, instance 0 among them.
    store.put_instances([instance(n) for n in range(250)], reap_at=NOW + timedelta(minutes=15))

    recorded = {i.instance_id: i.state for i in store.list_instances(ANNEX)}
    assert len(recorded) == 250
    assert recorded[instance(0).instance_id] is InstanceState.RUNNING  # not overwritten back to pending
    # 1 + 3 transactions; the chunk holding instance 0 fell back to one put per record
    assert len(transactions) == 4
    assert len(puts) == 100
    clients.client.cache_clear()
