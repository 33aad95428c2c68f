"""The store's fail-safe writes: one instance's quota unit comes back exactly once, whatever the order."""

from __future__ import annotations

from datetime import timedelta

from annex.core.models import EndReason
from annex.store import InstanceEnd, InstanceKey
from annex.store._table import annex_pk, instance_sk, to_attrs  # the layout, for states no API makes
from annex.store.annexes import annex_item

RETENTION = timedelta(days=30)


def end_one(fleet, annex, iid, reason=EndReason.IDLE):
    return fleet.store.end_instance(
        InstanceKey(annex.id, iid),
        owner=annex.owner,
        reason=reason,
        now=fleet.t0,
        actor="idle-reap",
        retention=RETENTION,
    )


def test_ending_an_instance_twice_gives_its_unit_back_once(fleet):
    annex, (a, _b) = fleet.annex(count=2)

    assert end_one(fleet, annex, a) is InstanceEnd.RELEASED
    assert end_one(fleet, annex, a) is InstanceEnd.UNCHANGED

    assert (fleet.quota(), fleet.held(annex.id)) == (1, 1)
    assert fleet.instance(annex.id, a).instance.end_reason == "idle"


def test_after_the_annex_ended_an_instance_is_only_marked(fleet):
    annex, (a, b) = fleet.annex(count=2, launch=True, record=True)
    assert end_one(fleet, annex, a) is InstanceEnd.RELEASED
    fleet.store.end_annex(
        annex.id, reason=EndReason.STOPPED, now=fleet.t0, actor="alice", retention=RETENTION
    )
    # the annex ended without marking b (a crash): b is only marked later
    fleet.ddb.update_item(
        TableName=fleet.store.table_name,
        Key={"pk": {"S": annex_pk(annex.id)}, "sk": {"S": instance_sk(b)}},
        UpdateExpression="SET #s = :p",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":p": {"S": "running"}},
    )

    assert end_one(fleet, annex, b) is InstanceEnd.MARKED

    assert fleet.quota() == 0
    assert fleet.held(annex.id) == 0


def test_a_unit_is_not_given_back_for_an_instance_never_recorded(fleet):
    annex, _ = fleet.annex(count=2, record=False)

    assert end_one(fleet, annex, "i-0000000000000dead") is InstanceEnd.UNCHANGED
    assert (fleet.quota(), fleet.held(annex.id)) == (2, 2)


def test_batched_reads_span_requests_and_retry_unprocessed_keys(fleet, monkeypatch):
    template, _ = fleet.annex(count=1, launch=False)
    annexes = [template.model_copy(update={"id": f"ax-{n:016x}"}) for n in range(1, 105)] + [template]
    for annex in annexes[:-1]:
        fleet.ddb.put_item(TableName=fleet.store.table_name, Item=to_attrs(annex_item(annex, held=1)))
    real = fleet.store._table.client.batch_get_item
    calls = []

    def throttled_once(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:  # DynamoDB hands the whole first request back unprocessed
            return {"Responses": {}, "UnprocessedKeys": kwargs["RequestItems"]}
        return real(**kwargs)

    monkeypatch.setattr(fleet.store._table.client, "batch_get_item", throttled_once)

    found = fleet.store.get_annexes([a.id for a in annexes] + ["ax-00000000000000ff"])

    assert set(found) == {a.id for a in annexes}
    assert all(record.annex.id == annex_id for annex_id, record in found.items())
    assert len(calls) == 3  # 100 keys, the same 100 again, the last 6
    assert all(len(c["RequestItems"][fleet.store.table_name]["Keys"]) <= 100 for c in calls)
