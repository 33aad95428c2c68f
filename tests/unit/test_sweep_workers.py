"""Bounded parallelism in the termination path, proven with a fake store (the moto tiers run one item at a
time: moto is not thread-safe); TerminateInstances in calls of at most 1,000 ids (botocore's Stubber, which
checks every call against EC2's model); the orphan sweep's segments cover every annex id exactly once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from annex.aws.inventory import TERMINATE_BATCH, Ec2Inventory
from annex.core.errors import LeaseNotDue
from annex.core.models import Annex, AnnexState, EndReason, Market
from annex.failsafe.lease_check import SEGMENT_BUCKETS, segment_of, segment_patterns
from annex.failsafe.termination import end_annexes
from annex.failsafe.workers import SERIAL, Workers
from annex_local.moto_ec2 import wildcard_pattern
from botocore.stub import Stubber

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
PROFILE = "arn:aws:iam::123456789012:instance-profile/annex-instance"


def annex(annex_id: str) -> Annex:
    return Annex(
        id=annex_id,
        name=annex_id,
        owner="arn:aws:iam::123456789012:user/alice",
        state=AnnexState.ENDED,
        end_reason=EndReason.LEASE_EXPIRED,
        count=1,
        instance_types=["c7i.xlarge"],
        market=Market.ON_DEMAND,
        lease_expires_at=NOW,
        idle_timeout_seconds=1200,
        created_at=NOW - timedelta(hours=1),
        updated_at=NOW,
    )


class SlowStore:
    """The store calls end_annexes makes. Each end_annex waits at a barrier of `together` parties: it
    returns only when that many transactions are in flight at once (a serial run breaks the barrier).
    It also records the most transactions ever in flight."""

    def __init__(self, together: int, *, refuse: set[str] = frozenset(), fail: set[str] = frozenset()):
        self.barrier = threading.Barrier(together, timeout=2)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.refuse, self.fail = refuse, fail
        self.marked: list[str] = []

    def end_annex(self, annex_id: str, **_: object) -> Annex:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.barrier.wait()
            if annex_id in self.refuse:
                raise LeaseNotDue(annex_id)
            if annex_id in self.fail:
                raise RuntimeError(f"{annex_id}: the transaction failed")
            return annex(annex_id)
        finally:
            with self.lock:
                self.in_flight -= 1

    def list_instances(self, annex_id: str) -> list[object]:
        return []

    def mark_instances_ended(self, annex_id: str, instance_ids: list[str], **_: object) -> None:
        with self.lock:
            self.marked.append(annex_id)


class NoInstances:
    def live_instances_of(self, annex_ids):
        return iter(())

    def terminate(self, instance_ids):
        return []


def test_a_sweep_ends_annexes_ten_transactions_at_a_time_and_never_more():
    store = SlowStore(together=10)
    ids = [f"ax-{n:016x}" for n in range(40)]

    result = end_annexes(
        store,  # type: ignore[arg-type]
        NoInstances(),  # type: ignore[arg-type]
        ids,
        reason=EndReason.LEASE_EXPIRED,
        actor="lease-check",
        now=NOW,
        retention=timedelta(days=30),
        workers=Workers(10),
    )

    assert store.most_in_flight == 10  # the barrier passed: ten at once, and the pool held it there
    assert sorted(result.annexes_ended) == ids
    assert sorted(store.marked) == ids


def test_an_eleventh_transaction_never_starts_while_ten_are_in_flight():
    # Eleven parties must meet: a pool of ten can never bring them together, so the barrier breaks
    store = SlowStore(together=11)
    ids = [f"ax-{n:016x}" for n in range(40)]

    result = end_annexes(
        store,  # type: ignore[arg-type]
        NoInstances(),  # type: ignore[arg-type]
        ids,
        reason=EndReason.LEASE_EXPIRED,
        actor="lease-check",
        now=NOW,
        retention=timedelta(days=30),
        workers=Workers(10),
    )

    assert store.most_in_flight == 10
    assert sorted(result.failures) == ids  # each failure reported, none raised
    assert result.annexes_ended == []


def test_one_failing_transaction_does_not_stop_the_others_and_each_outcome_is_reported():
    store = SlowStore(together=4, refuse={"ax-0000000000000001"}, fail={"ax-0000000000000002"})
    ids = [f"ax-{n:016x}" for n in range(8)]

    result = end_annexes(
        store,  # type: ignore[arg-type]
        NoInstances(),  # type: ignore[arg-type]
        ids,
        reason=EndReason.LEASE_EXPIRED,
        actor="lease-check",
        now=NOW,
        retention=timedelta(days=30),
        workers=Workers(4),
    )

    assert result.skipped == ["ax-0000000000000001"]
    assert list(result.failures) == ["ax-0000000000000002"]
    assert sorted(result.annexes_ended) == sorted(set(ids) - {"ax-0000000000000001", "ax-0000000000000002"})


def test_serial_workers_run_one_at_a_time_in_order():
    seen: list[int] = []
    outcomes = SERIAL.map(lambda n: seen.append(n) or n * 2, range(5))
    assert seen == [0, 1, 2, 3, 4]
    assert [o.result for o in outcomes] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("size", [0, 33])
def test_the_pool_is_bounded(size):
    with pytest.raises(ValueError, match="workers"):
        Workers(size)


def test_terminate_instances_takes_at_most_1000_ids_per_call():
    client = boto3.client("ec2", region_name="us-east-1")
    ids = [f"i-{n:017x}" for n in range(2_500)]
    with Stubber(client) as stub:
        for batch in (ids[:1000], ids[1000:2000], ids[2000:]):
            stub.add_response(
                "terminate_instances",
                {"TerminatingInstances": [{"InstanceId": i} for i in batch]},
                {"InstanceIds": batch},
            )
        accepted = Ec2Inventory(client, "s", instance_profile_arn=PROFILE).terminate(ids)
        stub.assert_no_pending_responses()
    assert TERMINATE_BATCH == 1000
    assert accepted == ids


@pytest.mark.parametrize("segments", [2, 5, 12, 15, 100, 256])
def test_the_segments_cover_every_annex_id_ending_exactly_once(segments):
    endings = [f"{b:02x}" for b in range(SEGMENT_BUCKETS)]
    owners = {e: [] for e in endings}
    for segment in range(segments):
        patterns = segment_patterns(segment, segments)
        assert len(patterns) <= 200  # EC2's values per filter
        for e in endings:
            if any(wildcard_pattern(p).fullmatch(f"ax-0123456789abcd{e}") for p in patterns):
                owners[e].append(segment)
    assert all(len(segs) == 1 for segs in owners.values()), owners


def test_each_minute_examines_the_next_segment():
    assert [segment_of(NOW + timedelta(minutes=m), 12) for m in range(13)] == [
        (segment_of(NOW, 12) + m) % 12 for m in range(13)
    ]
    with pytest.raises(ValueError, match="segment 0 of 1"):
        segment_patterns(0, 1)
