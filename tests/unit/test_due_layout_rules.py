"""The due index's layout rules, pure: which shard an item's entry lives on, and when a heartbeat must
move an instance's stored check time."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

from annex.core.config import ReapTiming
from annex.failsafe.rules import stored_check
from annex.store._table import DUE_REAP, DUE_SHARDS, annex_pk, due_partitions, due_shard, instance_sk

from tests.unit.builders import T0

ROOT = Path(__file__).resolve().parents[2]
TIMING = ReapTiming.model_validate({"BOOT_GRACE": "15m", "HEARTBEAT_LOSS_GRACE": "5m"})
M = timedelta(minutes=1)


def test_an_items_shard_is_the_same_in_every_process():
    # Python's own hash() of a str changes with PYTHONHASHSEED; a shard must not (an item would move).
    code = (
        "from annex.store._table import due_shard, annex_pk, instance_sk;"
        "print(','.join(due_shard('reap', annex_pk(f'ax-{k:016x}'), instance_sk(f'i-{k:017x}'))"
        " for k in range(64)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "layers" / "annex")}
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**env, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(runs) == 1


def test_instance_keys_spread_evenly_over_the_shards():
    shards = Counter(
        due_shard(DUE_REAP, annex_pk(f"ax-{k // 10:016x}"), instance_sk(f"i-{k:017x}")) for k in range(16_000)
    )
    assert set(shards) == set(due_partitions(DUE_REAP)) - {DUE_REAP}
    assert max(shards.values()) < 1.1 * 16_000 / DUE_SHARDS


def test_the_sweeps_read_every_shard_and_the_key_written_before_sharding():
    partitions = due_partitions(DUE_REAP)
    assert len(partitions) == DUE_SHARDS + 1
    assert DUE_REAP in partitions  # the migration: entries written before sharding


S = timedelta(seconds=1)


def test_a_stored_check_that_is_early_and_far_enough_beyond_the_next_refresh_stays():
    # Given a report that writes now (grace 5m: R = 2.5m, so the next refresh is at now + 2.5m)
    now = T0 + 10 * M
    exact = now + 7 * M + 30 * S  # the exact deadline moved on to now + grace + R
    # Then a stored check 100 s or more beyond that refresh stays
    assert stored_check(now + 5 * M, exact, now=now, timing=TIMING, refreshed=now) is None
    assert stored_check(now + 4 * M + 10 * S, exact, now=now, timing=TIMING, refreshed=now) is None


def test_a_stored_check_that_would_come_near_before_the_next_refresh_moves_to_the_exact_deadline():
    now = T0 + 10 * M
    exact = now + 7 * M + 30 * S
    # 4 minutes ahead, but only 90 s beyond the next refresh: the next write may come too late to move it
    assert stored_check(now + 4 * M, exact, now=now, timing=TIMING, refreshed=now) == exact
    assert stored_check(now + M, exact, now=now, timing=TIMING, refreshed=now) == exact


def test_a_report_that_writes_nothing_counts_from_the_stored_refresh():
    # Given a record last written a minute ago (next refresh at now + 1.5m) and an unchanged deadline
    now = T0 + 10 * M
    refreshed = now - M
    exact = refreshed + 7 * M + 30 * S
    # Then a check 100 s beyond that refresh stays, one 90 s beyond it must move now
    assert stored_check(now + 3 * M + 10 * S, exact, now=now, timing=TIMING, refreshed=refreshed) is None
    assert stored_check(now + 3 * M, exact, now=now, timing=TIMING, refreshed=refreshed) == exact


def test_a_stored_check_later_than_the_deadline_moves_earlier_at_once():
    now = T0 + 10 * M
    assert stored_check(now + 5 * M, now + 2 * M, now=now, timing=TIMING, refreshed=now) == now + 2 * M


def test_a_missing_stored_check_is_written_and_an_exact_one_is_left():
    now = T0 + 10 * M
    assert stored_check(None, now + 5 * M, now=now, timing=TIMING, refreshed=now) == now + 5 * M
    assert stored_check(now + 30 * S, now + 30 * S, now=now, timing=TIMING, refreshed=now) is None


def test_the_due_index_projects_keys_only():
    # A non-key update writes nothing to a KEYS_ONLY index; any other projection would charge every heartbeat.
    from annex_local.template import table_create_kwargs

    (due,) = [g for g in table_create_kwargs("t")["GlobalSecondaryIndexes"] if g["IndexName"] == "due"]
    assert due["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    assert [k["AttributeName"] for k in due["KeySchema"]] == ["due_kind", "due_at"]
