"""The write-sharded `due` index: a fleet's index writes spread over every shard, the sweeps find what is
due in every shard (and under the unsharded keys written before sharding), and a heartbeat that does not
move the due time writes no index key."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from annex.core.clock import to_epoch
from annex.failsafe.idle_reap import run_idle_reap
from annex.failsafe.lease_check import run_lease_check
from annex.store._table import (  # the layout, to check the keys and to write a pre-sharding item
    DUE_LEASE,
    DUE_REAP,
    DUE_SHARDS,
    META,
    annex_pk,
    due_shard,
    instance_sk,
)

from tests.integration.conftest import TABLE, run_tagged_instances

MINUTE = timedelta(minutes=1)
ALL_SHARDS = {f"{kind}#{n:02d}" for kind in (DUE_REAP,) for n in range(DUE_SHARDS)}


class IndexWrites:
    """Every write request to the table, seen by a botocore hook: for UpdateItem, the due keys it sets."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.updates: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        client.meta.events.register("before-parameter-build.dynamodb", self._seen)

    def _seen(self, model: Any, params: dict[str, Any], **_kwargs: Any) -> None:
        self.calls[model.name] += 1
        if model.name == "UpdateItem":
            self.updates.append(params)

    def due_partitions_written(self) -> list[str]:
        """The `due` partition key each UpdateItem set (its :shard value), in order."""
        return [
            u["ExpressionAttributeValues"][":shard"]["S"]
            for u in self.updates
            if "due_kind" in u["UpdateExpression"]
        ]

    def close(self) -> None:
        self.client.meta.events.unregister("before-parameter-build.dynamodb", self._seen)


@pytest.fixture
def writes(ddb):
    seen = IndexWrites(ddb)
    yield seen
    seen.close()


def _item(ddb, annex_id: str, sk: str) -> dict[str, Any]:
    return ddb.get_item(TableName=TABLE, Key={"pk": {"S": annex_pk(annex_id)}, "sk": {"S": sk}})["Item"]


def _annex_id_for(shard: str, kind: str, sk: str, used: set[str]) -> str:
    """An annex id whose item (annex_pk(id), sk) falls in `shard` of `kind`."""
    for n in itertools.count():
        annex_id = f"ax-{n:016x}"
        if annex_id not in used and due_shard(kind, annex_pk(annex_id), sk) == shard:
            used.add(annex_id)
            return annex_id
    raise AssertionError("unreachable")


def test_a_fleets_heartbeats_spread_over_every_shard(fleet, writes):
    ids = [f"i-{n:017x}" for n in range(1, 321)]  # recorded only: heartbeats never call EC2
    annexes = [fleet.annex(count=32, instance_ids=ids[k : k + 32])[0] for k in range(0, len(ids), 32)]
    writes.updates.clear()

    at = fleet.t0 + 2 * MINUTE  # the first report of each: its due time moves from the boot grace
    for annex, k in zip(annexes, range(0, len(ids), 32), strict=True):
        for instance_id in ids[k : k + 32]:
            fleet.heartbeat(annex, instance_id, at=at, claimed=4)

    per_shard = Counter(writes.due_partitions_written())
    assert sum(per_shard.values()) == len(ids)
    assert set(per_shard) == ALL_SHARDS
    mean = len(ids) / DUE_SHARDS
    assert max(per_shard.values()) <= 2 * mean, per_shard
    # What the table holds agrees: every instance's index entry is on its own key's shard.
    for annex, k in zip(annexes, range(0, len(ids), 32), strict=True):
        for instance_id in ids[k : k + 32]:
            item = _item(fleet.ddb, annex.id, instance_sk(instance_id))
            assert item["due_kind"]["S"] == due_shard(DUE_REAP, annex_pk(annex.id), instance_sk(instance_id))


def test_a_heartbeat_that_does_not_move_the_due_time_writes_no_index_key(fleet, writes):
    annex, (iid,) = fleet.annex(count=1, instance_ids=["i-00000000000000001"])
    first = fleet.t0 + 2 * MINUTE
    fleet.heartbeat(annex, iid, at=first, claimed=4)
    keys = {k: _item(fleet.ddb, annex.id, instance_sk(iid))[k] for k in ("due_kind", "due_at")}
    assert int(keys["due_at"]["N"]) == to_epoch(fleet.silent_at(first))
    writes.updates.clear()
    writes.calls.clear()

    # A minute later the instance reports a change (so it writes): its silence deadline moves a minute on,
    # but the stored check is early and far enough beyond the next refresh, so it stays.
    fleet.heartbeat(annex, iid, at=first + MINUTE, claimed=3)
    calls = dict(writes.calls)

    item = _item(fleet.ddb, annex.id, instance_sk(iid))
    assert {k: item[k] for k in ("due_kind", "due_at")} == keys
    assert item["claimed_slots"]["N"] == "3"  # the report itself was recorded
    assert calls == {"BatchGetItem": 1, "UpdateItem": 1}  # one read, one write: no second write
    (update,) = writes.updates
    assert "due_kind" not in update["UpdateExpression"]
    assert "due_at" not in update["UpdateExpression"].split("SET", 1)[1]
    assert ":seen_due" in update["ExpressionAttributeValues"]  # conditional on the entry it decided from


def test_the_due_time_still_moves_before_it_comes_near_and_never_late(fleet):
    annex, (iid,) = fleet.annex(count=1, instance_ids=["i-00000000000000001"], idle=timedelta(hours=1))
    at = fleet.t0 + 2 * MINUTE
    moved = 0
    previous = None
    for _ in range(30):  # half an hour of busy reports, one a minute
        fleet.heartbeat(annex, iid, at=at, claimed=4)
        record = fleet.instance(annex.id, iid)
        due = record.due_at
        assert due is not None
        assert record.instance.last_heartbeat_at is not None
        # never later than the silence deadline of what is stored, never already due
        assert at < due <= fleet.silent_at(record.instance.last_heartbeat_at)
        moved += due != previous
        previous = due
        at += MINUTE
    # The index entry moved on the first report and then on one report in six (every other refresh,
    # each refresh R = 2.5 minutes or more after the one before), not on every one.
    assert 5 <= moved <= 6, moved


def test_becoming_idle_moves_the_due_time_earlier_at_once(fleet):
    annex, (iid,) = fleet.annex(count=1, instance_ids=["i-00000000000000001"], idle=timedelta(minutes=2))
    at = fleet.t0 + 2 * MINUTE
    fleet.heartbeat(annex, iid, at=at, claimed=4)  # due at + 7m30s (the loss grace + R)
    fleet.heartbeat(annex, iid, at=at + MINUTE, claimed=4)  # nothing changed: nothing written
    fleet.heartbeat(annex, iid, at=at + 2 * MINUTE, claimed=0)  # idle from now: reaped 2 minutes on

    due = fleet.instance(annex.id, iid).due_at
    assert due is not None
    assert to_epoch(due) == to_epoch(at + 4 * MINUTE)  # earlier than the stored at + 5m


def test_idle_reap_finds_due_instances_in_every_shard_and_under_the_old_key(fleet):
    s = fleet.reap_settings
    used: set[str] = set()
    expected: set[str] = set()
    launched = run_tagged_instances(fleet.ec2_client, "ax-placeholder", len(ALL_SHARDS))
    for shard, iid in zip(sorted(ALL_SHARDS), launched, strict=True):
        annex_id = _annex_id_for(shard, DUE_REAP, instance_sk(iid), used)
        fleet.ec2_client.create_tags(Resources=[iid], Tags=[{"Key": "annex:id", "Value": annex_id}])
        fleet.annex(count=1, annex_id=annex_id, instance_ids=[iid])
        expected.add(iid)
    # One instance recorded before sharding: its entry is under the unsharded key.
    legacy, (old,) = fleet.annex(count=1)
    fleet.ddb.update_item(
        TableName=TABLE,
        Key={"pk": {"S": annex_pk(legacy.id)}, "sk": {"S": instance_sk(old)}},
        UpdateExpression="SET due_kind = :k",
        ExpressionAttributeValues={":k": {"S": DUE_REAP}},
    )
    expected.add(old)

    # None of them was ever heard from: all are silent once the boot grace has passed.
    report = run_idle_reap(
        fleet.store, fleet.ec2, now=fleet.t0 + s.boot_grace + MINUTE, timing=s, retention=s.retention
    )

    assert report.ok
    assert report.terminated == {"silent": len(expected)}
    assert fleet.running(sorted(expected)) == set()


def test_lease_check_ends_due_leases_in_every_shard_and_under_the_old_key(fleet):
    used: set[str] = set()
    ids: list[str] = []
    for shard in sorted(f"{DUE_LEASE}#{n:02d}" for n in range(DUE_SHARDS)):
        annex_id = _annex_id_for(shard, DUE_LEASE, META, used)
        annex, _ = fleet.annex(count=1, annex_id=annex_id, lease=timedelta(hours=1), launch=False)
        ids.append(annex.id)
    legacy, _ = fleet.annex(count=1, lease=timedelta(hours=1), launch=False)
    fleet.ddb.update_item(
        TableName=TABLE,
        Key={"pk": {"S": annex_pk(legacy.id)}, "sk": {"S": META}},
        UpdateExpression="SET due_kind = :k",
        ExpressionAttributeValues={":k": {"S": DUE_LEASE}},
    )
    ids.append(legacy.id)

    report = run_lease_check(
        fleet.store, fleet.ec2, now=fleet.t0 + timedelta(hours=1, seconds=1), retention=timedelta(days=1)
    )

    assert report.ok
    assert report.due == len(ids)
    assert {a: fleet.store.get_annex(a).state.value for a in ids} == dict.fromkeys(ids, "ended")
