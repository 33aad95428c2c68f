"""The orphan sweep and every termination see only instances launched with the stack's instance profile
(anyone with ec2:CreateTags can write the stack's tag), and the orphan sweep's cost per run is a segment
of the fleet, every instance examined within one rotation."""

from __future__ import annotations

from datetime import timedelta

from annex.core.clock import to_iso
from annex.core.config import LeaseCheckSettings
from annex.core.models import EndReason
from annex.failsafe.lease_check import run_lease_check, segment_of, segment_patterns, sweep_orphans
from annex.failsafe.termination import end_annexes
from annex_local.moto_ec2 import wildcard_pattern
from annex_local.template import resolve_environment

from tests.integration.conftest import STACK, TABLE, run_tagged_instances
from tests.integration.failsafe.conftest import ROLE_OVERRIDES

PAST = "2020-01-01T00:00:00Z"


def sweep(fleet, at, segments=1):
    return run_lease_check(
        fleet.store, fleet.ec2, now=at, retention=fleet.lease_settings.retention, orphan_segments=segments
    )


def test_a_tagged_instance_without_the_stacks_profile_is_never_terminated(fleet, ec2):
    # Given instances that carry the stack's tag, an expired lease tag and no annex record, launched
    # without an instance profile or with someone else's; and one like them with the stack's profile
    bare = run_tagged_instances(ec2, "ax-00000000000000aa", 2, lease=PAST, profile=None)
    foreign = run_tagged_instances(ec2, "ax-00000000000000ab", 1, lease=PAST, profile="someone-elses")
    ours = run_tagged_instances(ec2, "ax-00000000000000ac", 1, lease=PAST)

    # When the orphan sweep runs over the whole fleet
    report = sweep(fleet, fleet.t0 + timedelta(minutes=1))

    # Then only the stack's own orphan is terminated
    assert report.ok
    assert report.terminated == {"orphan": 1}
    assert fleet.running(ours) == set()
    assert fleet.running(bare + foreign) == set(bare + foreign)


def test_ending_an_annex_leaves_look_alikes_tagged_with_its_id_running(fleet, ec2):
    # Given two live annexes with two instances each, and for each two look-alikes someone tagged with its
    # id (one launched without an instance profile, one with another profile)
    expiring, expiring_ids = fleet.annex(count=2, lease=timedelta(hours=1))
    stopped, stopped_ids = fleet.annex(count=2, lease=timedelta(hours=4))
    lookalikes = [
        i
        for a in (expiring, stopped)
        for profile in (None, "someone-elses")
        for i in run_tagged_instances(ec2, a.id, 1, lease=to_iso(a.lease_expires_at), profile=profile)
    ]

    # When one's lease ends (lease-check) and the other is stopped (end_annexes, as the stop path calls it)
    report = sweep(fleet, expiring.lease_expires_at)
    stop = end_annexes(
        fleet.store,
        fleet.ec2,
        [stopped.id],
        reason=EndReason.STOPPED,
        actor="alice",
        now=expiring.lease_expires_at,
        retention=timedelta(days=1),
    )

    # Then their own instances are terminated and the look-alikes are not
    assert report.ok
    assert report.terminated == {"lease-expired": 2}
    assert sorted(stop.instance_ids) == sorted(stopped_ids)
    assert fleet.running(expiring_ids + stopped_ids) == set()
    assert fleet.running(lookalikes) == set(lookalikes)


def segment_of_annex(annex_id: str, segments: int) -> int:
    """The segment whose tag patterns match this annex id, by EC2's wildcard rules (the fake's)."""
    (segment,) = [
        s
        for s in range(segments)
        if any(wildcard_pattern(p).fullmatch(annex_id) for p in segment_patterns(s, segments))
    ]
    return segment


def test_one_orphan_sweep_run_reads_one_segment_and_a_rotation_covers_every_instance(fleet, ec2):
    # Given the template's rotation, 12 ended annexes, one in each segment (the sweep cuts the fleet by
    # the last two hex digits of the annex id), with an instance each still running, and 4 live annexes
    # whose instances must keep running
    template = {k: v for k, v in ROLE_OVERRIDES.items() if k != "ORPHAN_SEGMENTS"}
    segments = LeaseCheckSettings.from_env(
        resolve_environment("LeaseCheckFunction", table_name=TABLE, stack_name=STACK, overrides=template)
    ).orphan_segments
    assert segments == 12
    ended: dict[str, list[str]] = {}
    for k in range(segments):
        annex_id = f"ax-{k:014x}{k * 256 // segments + k % 3:02x}"
        fleet.annex(annex_id=annex_id, count=1)
        fleet.store.end_annex(
            annex_id, reason=EndReason.STOPPED, now=fleet.t0, actor="test", retention=timedelta(days=1)
        )
        ended[annex_id] = [i.instance_id for i in fleet.store.list_instances(annex_id)]
    live = [fleet.annex(count=1) for _ in range(4)]
    every = [i for ids in ended.values() for i in ids]
    live_ids = [i for _annex, ids in live for i in ids]
    assert fleet.running(every) == set(every)

    # When the orphan sweep runs once a minute for one rotation
    terminated: set[str] = set()
    for minute in range(segments):
        at = fleet.t0 + timedelta(minutes=minute)
        segment = segment_of(at, segments)
        in_segment = [
            a for a in [*ended, *(a.id for a, _ids in live)] if segment_of_annex(a, segments) == segment
        ]
        before, reads = fleet.running(every), fleet.store.items_read
        result = sweep_orphans(fleet.store, fleet.ec2, now=at, retention=timedelta(days=1), segments=segments)
        # Then each run sees only its segment's instances and reads only their annex records...
        assert result.running == len(in_segment)
        assert fleet.store.items_read - reads <= 3 * len(in_segment)  # annex record + instance records
        gone = before - fleet.running(every)
        assert gone == {i for a in in_segment if a in ended for i in ended[a]}
        assert len(gone) == 1
        terminated |= gone
    # ...and after one rotation every orphan is gone and every live instance still runs
    assert terminated == set(every)
    assert fleet.running(live_ids) == set(live_ids)
