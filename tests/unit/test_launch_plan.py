"""The launch function's pure parts: batching, client tokens, subnet order, tags, notes, triggers."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from annex.core.models import Annex, AnnexState, Market
from annex.launch.capacity import MAX_LAUNCH_BATCH, Refusal
from annex.launch.plan import (
    annex_tags,
    batch_sizes,
    client_token,
    launch_note,
    ordered_subnets,
)
from annex.store.stream import LaunchTrigger

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SUBNETS = ["subnet-0000000a", "subnet-0000000b", "subnet-0000000c"]


def make_annex(**changes) -> Annex:
    fields = {
        "id": "ax-0123456789abcdef",
        "name": "bio-run",
        "owner": "arn:aws:iam::123456789012:user/alice",
        "state": AnnexState.REQUESTED,
        "count": 10,
        "instance_types": ["c7i.xlarge"],
        "market": Market.ON_DEMAND,
        "lease_expires_at": datetime(2026, 11, 22, 16, 0, tzinfo=UTC),
        "idle_timeout_seconds": 1200,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Annex(**{**fields, **changes})


@pytest.mark.parametrize("count", [1, 7, 99, 100, 101, 250, 1000, 10_000])
def test_batches_cover_the_count_in_at_most_ceil_n_over_100_calls(count):
    sizes = batch_sizes(count)

    assert sum(sizes) == count
    assert len(sizes) == math.ceil(count / MAX_LAUNCH_BATCH)
    assert all(1 <= s <= MAX_LAUNCH_BATCH for s in sizes)


def test_nothing_to_launch_means_no_batch():
    assert batch_sizes(0) == []
    assert batch_sizes(-3) == []


def test_client_tokens_are_deterministic_short_and_distinct_per_call():
    token = client_token("ax-0123456789abcdef", 100, "c7i.xlarge", "subnet-0000000a", 100)

    assert token == client_token("ax-0123456789abcdef", 100, "c7i.xlarge", "subnet-0000000a", 100)
    assert len(token) <= 64  # EC2's limit
    assert token.startswith("ax-0123456789abcdef-")
    others = {
        client_token("ax-0123456789abcdee", 100, "c7i.xlarge", "subnet-0000000a", 100),  # another annex
        client_token("ax-0123456789abcdef", 0, "c7i.xlarge", "subnet-0000000a", 100),  # another offset
        client_token("ax-0123456789abcdef", 100, "m7i.xlarge", "subnet-0000000a", 100),  # another type
        client_token("ax-0123456789abcdef", 100, "c7i.xlarge", "subnet-0000000b", 100),  # another subnet
        client_token("ax-0123456789abcdef", 100, "c7i.xlarge", "subnet-0000000a", 50),  # another size
    }
    assert token not in others
    assert len(others) == 5


def test_each_annex_tries_the_subnets_in_its_own_fixed_order():
    first = ordered_subnets("ax-0000000000000001", SUBNETS)

    assert sorted(first) == sorted(SUBNETS)
    assert ordered_subnets("ax-0000000000000001", SUBNETS) == first
    starts = {ordered_subnets(f"ax-{i:016x}", SUBNETS)[0] for i in range(6)}
    assert starts == set(SUBNETS)  # annexes spread over the zones
    assert ordered_subnets("ax-0000000000000001", []) == []


def test_annex_tags_name_the_annex_and_cannot_be_overridden_by_user_tags():
    annex = make_annex(tags={"project": "genomics", "Name": "my-nodes"})

    tags = annex_tags(annex, "annex-prod")

    assert tags["annex:id"] == "ax-0123456789abcdef"
    assert tags["annex:name"] == "bio-run"
    assert tags["annex:owner"] == "arn:aws:iam::123456789012:user/alice"
    assert tags["annex:stack"] == "annex-prod"
    assert tags["annex:lease-expires"] == "2026-11-22T16:00:00Z"
    assert tags["project"] == "genomics"
    assert tags["Name"] == "my-nodes"
    assert annex_tags(make_annex(), "annex-prod")["Name"] == "annex-bio-run"


def test_launch_note_says_how_many_and_why_not_the_rest():
    refusals = [
        Refusal("InsufficientInstanceCapacity", "no room", "c7i.xlarge", "us-east-1a"),
        Refusal("InsufficientInstanceCapacity", "no room", "c7i.xlarge", "us-east-1b"),
        Refusal("InsufficientInstanceCapacity", "no room", "c7i.xlarge", "us-east-1a"),
    ]

    assert launch_note(10, 10, []) == "10 of 10 launched"
    assert launch_note(10, 7, refusals) == (
        "7 of 10 launched: InsufficientInstanceCapacity for c7i.xlarge in us-east-1a, us-east-1b"
    )
    assert launch_note(10, 10, refusals[:1]).startswith(
        "10 of 10 launched after InsufficientInstanceCapacity"
    )


def test_launch_note_quotes_ec2_when_the_configuration_is_wrong():
    refusal = Refusal(
        "InvalidAMIID.NotFound", "InvalidAMIID.NotFound: The image id '[ami-1234]' does not exist", None, None
    )

    note = launch_note(3, 0, [refusal])

    assert (
        note
        == "0 of 3 launched: InvalidAMIID.NotFound (The image id '[ami-1234]' does not exist) for any type"
    )


@pytest.mark.parametrize(
    ("event_name", "keys", "image", "expected"),
    [
        (
            "INSERT",
            {"pk": "ANNEX#ax-0123456789abcdef", "sk": "META"},
            {"state": "requested"},
            "ax-0123456789abcdef",
        ),
        ("MODIFY", {"pk": "ANNEX#ax-0123456789abcdef", "sk": "META"}, {"state": "requested"}, None),
        ("INSERT", {"pk": "ANNEX#ax-0123456789abcdef", "sk": "META"}, {"state": "running"}, None),
        ("INSERT", {"pk": "ANNEX#ax-0123456789abcdef", "sk": "INST#i-0123456789abcdef0"}, {}, None),
        ("INSERT", {"pk": "OWNER#arn:aws:iam::1:user/a", "sk": "QUOTA"}, {}, None),
        ("REMOVE", {"pk": "ANNEX#ax-0123456789abcdef", "sk": "META"}, {}, None),
    ],
)
def test_only_a_new_requested_annex_record_triggers_a_launch(event_name, keys, image, expected):
    trigger = LaunchTrigger.parse(event_name, keys, image)

    assert (trigger.annex_id if trigger else None) == expected
