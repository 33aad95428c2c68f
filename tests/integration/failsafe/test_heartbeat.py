"""POST /heartbeat: only the instance itself may report; one write per report; the answer says what to do."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from annex.core.clock import to_epoch, to_iso
from annex.core.models import AnnexState, EndReason

from tests.integration.conftest import table_items
from tests.integration.failsafe.conftest import load_event

ANNEX = "ax-0123456789abcdef"
OTHER_ANNEX = "ax-fedcba9876543210"
A = "i-0a1b2c3d4e5f60718"  # the instance the event files sign as
B = "i-0b2c3d4e5f6071829"


@pytest.fixture
def recorded(fleet):
    """The annex of the event files, with instances A and B recorded (launched at t0)."""
    annex, _ = fleet.annex(annex_id=ANNEX, instance_ids=[A, B], idle=timedelta(minutes=20))
    return annex


def call(heartbeat_fn, event, *, at):
    resp = heartbeat_fn(event, at=at)
    return resp["statusCode"], json.loads(resp["body"])


def test_report_is_recorded_and_answered_with_the_lease(fleet, recorded, heartbeat_fn):
    at = fleet.t0 + timedelta(minutes=2)

    status, body = call(heartbeat_fn, load_event("heartbeat-ok"), at=at)

    assert status == 200
    assert body == {"action": "run", "lease_expires_at": to_iso(recorded.lease_expires_at), "reason": ""}
    item = fleet.instance(ANNEX, A)
    assert item.instance.state == "running"
    assert item.instance.last_heartbeat_at == at
    assert (item.instance.claimed_slots, item.instance.total_slots) == (3, 4)
    assert item.instance.idle_since is None
    # busy: the next check is when it would count as silent
    assert to_epoch(item.due_at) == to_epoch(fleet.silent_at(at))


def test_idle_since_is_set_once_and_cleared_by_a_claim(fleet, heartbeat_fn):
    annex, _ = fleet.annex(annex_id=ANNEX, instance_ids=[A], idle=timedelta(minutes=5))
    first = fleet.t0 + timedelta(minutes=1)
    call(heartbeat_fn, load_event("heartbeat-idle"), at=first)
    call(heartbeat_fn, load_event("heartbeat-idle"), at=first + timedelta(minutes=3))

    item = fleet.instance(ANNEX, A)
    assert item.instance.idle_since == first
    # idle: the next check is the idle deadline (earlier than the silence deadline here)
    assert to_epoch(item.due_at) == to_epoch(first + annex.idle_timeout)

    call(heartbeat_fn, load_event("heartbeat-ok"), at=first + timedelta(minutes=4))
    item = fleet.instance(ANNEX, A)
    assert item.instance.idle_since is None
    assert item.instance.claimed_slots == 3


def test_duplicate_report_changes_nothing(fleet, recorded, heartbeat_fn):
    at = fleet.t0 + timedelta(minutes=2)
    first = call(heartbeat_fn, load_event("heartbeat-ok"), at=at)
    before = table_items(fleet.ddb)

    again = call(heartbeat_fn, load_event("heartbeat-ok"), at=at)

    assert again == first
    assert table_items(fleet.ddb) == before


def test_late_report_does_not_move_the_record_backwards(fleet, recorded, heartbeat_fn):
    newer = fleet.t0 + timedelta(minutes=3)
    call(heartbeat_fn, load_event("heartbeat-ok"), at=newer)  # 3 of 4 claimed
    before = table_items(fleet.ddb)

    # A report sent earlier (idle) arrives late: it is answered but not recorded.
    status, body = call(heartbeat_fn, load_event("heartbeat-idle"), at=newer - timedelta(seconds=30))

    assert status == 200
    assert body["action"] == "run"
    assert table_items(fleet.ddb) == before
    item = fleet.instance(ANNEX, A)
    assert item.instance.last_heartbeat_at == newer
    assert item.instance.claimed_slots == 3


def test_instance_a_cannot_report_as_instance_b(fleet, recorded, heartbeat_fn):
    before = table_items(fleet.ddb)

    status, body = call(heartbeat_fn, load_event("heartbeat-forged"), at=fleet.t0 + timedelta(minutes=2))

    assert status == 403
    assert body["error"] == "Forbidden"
    assert A in body["message"]
    assert B in body["message"]
    assert table_items(fleet.ddb) == before


def test_a_caller_that_is_not_the_instance_role_is_refused(fleet, recorded, heartbeat_fn):
    before = table_items(fleet.ddb)

    status, body = call(
        heartbeat_fn, load_event("heartbeat-not-instance-role"), at=fleet.t0 + timedelta(minutes=2)
    )

    assert status == 403
    assert body["error"] == "Forbidden"
    assert table_items(fleet.ddb) == before


def test_another_roles_session_named_like_the_instance_is_refused(fleet, recorded, heartbeat_fn):
    event = load_event("heartbeat-ok")
    event["requestContext"]["authorizer"]["iam"]["userArn"] = (
        f"arn:aws:sts::123456789012:assumed-role/SomeOtherRole/{A}"
    )
    before = table_items(fleet.ddb)

    status, _ = call(heartbeat_fn, event, at=fleet.t0 + timedelta(minutes=2))

    assert status == 403
    assert table_items(fleet.ddb) == before


def test_an_instance_cannot_report_for_an_annex_it_does_not_belong_to(fleet, heartbeat_fn):
    fleet.annex(annex_id=OTHER_ANNEX, instance_ids=[A])  # A belongs to another annex
    fleet.annex(annex_id=ANNEX, instance_ids=[B])
    before = table_items(fleet.ddb)

    status, body = call(heartbeat_fn, load_event("heartbeat-ok"), at=fleet.t0 + timedelta(minutes=2))

    assert status == 403
    assert ANNEX in body["message"]
    assert table_items(fleet.ddb) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"instance_id": A, "annex_id": ANNEX, "claimed_slots": 5, "total_slots": 4}, "body"),
        ({"instance_id": A, "annex_id": ANNEX, "total_slots": 4}, "claimed_slots"),
        ({"instance_id": A, "annex_id": ANNEX, "claimed_slots": -1, "total_slots": 4}, "claimed_slots"),
        ({"instance_id": "i-xyz", "annex_id": ANNEX, "claimed_slots": 0, "total_slots": 4}, "instance_id"),
        ({"instance_id": A, "annex_id": "annex-1", "claimed_slots": 0, "total_slots": 4}, "annex_id"),
        ({"instance_id": A, "annex_id": ANNEX, "claimed_slots": 0, "total_slots": 4, "x": 1}, "x"),
        ({"instance_id": A, "annex_id": ANNEX, "claimed_slots": "two", "total_slots": 4}, "claimed_slots"),
    ],
)
def test_a_bad_body_is_a_4xx_naming_the_field_and_changes_nothing(fleet, recorded, heartbeat_fn, body, field):
    event = load_event("heartbeat-ok")
    event["body"] = json.dumps(body)
    before = table_items(fleet.ddb)

    status, answer = call(heartbeat_fn, event, at=fleet.t0 + timedelta(minutes=2))

    assert status == 422
    assert answer["error"] == "ValidationError"
    assert field in [f["field"] for f in answer["fields"]]
    assert table_items(fleet.ddb) == before


def test_the_event_file_for_a_bad_body_names_the_reason(fleet, recorded, heartbeat_fn):
    status, answer = call(heartbeat_fn, load_event("heartbeat-bad-body"), at=fleet.t0)

    assert status == 422
    assert "claimed_slots must not exceed total_slots" in answer["message"]


def test_malformed_json_is_a_400(fleet, recorded, heartbeat_fn):
    event = load_event("heartbeat-ok")
    event["body"] = "{not json"

    status, answer = call(heartbeat_fn, event, at=fleet.t0)

    assert status == 400
    assert answer["error"] == "MalformedJSON"


def test_an_instance_of_an_ended_annex_is_told_to_terminate_and_nothing_is_written(
    fleet, recorded, heartbeat_fn
):
    fleet.store.end_annex(
        ANNEX, reason=EndReason.STOPPED, now=fleet.t0, actor="alice", retention=timedelta(days=30)
    )
    before = table_items(fleet.ddb)

    status, body = call(heartbeat_fn, load_event("heartbeat-ok"), at=fleet.t0 + timedelta(minutes=1))

    assert status == 200
    assert body["action"] == "terminate"
    assert "stopped" in body["reason"]
    assert table_items(fleet.ddb) == before


def test_an_instance_whose_annex_record_is_gone_is_told_to_terminate(fleet, recorded, heartbeat_fn):
    fleet.ddb.delete_item(
        TableName=fleet.store.table_name, Key={"pk": {"S": f"ANNEX#{ANNEX}"}, "sk": {"S": "META"}}
    )

    status, body = call(heartbeat_fn, load_event("heartbeat-ok"), at=fleet.t0 + timedelta(minutes=1))

    assert status == 200
    assert body["action"] == "terminate"


def test_a_passed_lease_means_terminate_even_before_the_lease_check_runs(fleet, heartbeat_fn):
    annex, _ = fleet.annex(annex_id=ANNEX, instance_ids=[A], lease=timedelta(minutes=30))

    status, body = call(heartbeat_fn, load_event("heartbeat-ok"), at=fleet.t0 + timedelta(minutes=30))

    assert status == 200
    assert body["action"] == "terminate"
    assert body["lease_expires_at"] == to_iso(annex.lease_expires_at)


def test_a_lease_about_to_end_means_drain(fleet, heartbeat_fn):
    fleet.annex(annex_id=ANNEX, instance_ids=[A], lease=timedelta(minutes=30))
    lead = fleet.heartbeat_settings.drain_lead

    _, early = call(
        heartbeat_fn,
        load_event("heartbeat-ok"),
        at=fleet.t0 + timedelta(minutes=30) - lead - timedelta(minutes=1),
    )
    _, late = call(heartbeat_fn, load_event("heartbeat-ok"), at=fleet.t0 + timedelta(minutes=30) - lead)

    assert early["action"] == "run"
    assert late["action"] == "drain"


def test_idle_past_the_timeout_means_drain(fleet, heartbeat_fn):
    fleet.annex(annex_id=ANNEX, instance_ids=[A], idle=timedelta(minutes=5))
    first = fleet.t0 + timedelta(minutes=1)
    call(heartbeat_fn, load_event("heartbeat-idle"), at=first)
    _, before_timeout = call(heartbeat_fn, load_event("heartbeat-idle"), at=first + timedelta(minutes=4))
    _, after = call(heartbeat_fn, load_event("heartbeat-idle"), at=first + timedelta(minutes=5))

    assert before_timeout["action"] == "run"
    assert after["action"] == "drain"


def test_a_terminated_instance_is_told_to_terminate(fleet, recorded, heartbeat_fn):
    fleet.store.mark_instances_ended(
        ANNEX, [A], reason=EndReason.IDLE, now=fleet.t0, retention=timedelta(days=30)
    )
    before = table_items(fleet.ddb)

    status, body = call(heartbeat_fn, load_event("heartbeat-ok"), at=fleet.t0 + timedelta(minutes=1))

    assert status == 200
    assert body["action"] == "terminate"
    assert "idle" in body["reason"]
    assert table_items(fleet.ddb) == before


def test_a_launching_annex_accepts_reports(fleet, heartbeat_fn):
    fleet.annex(annex_id=ANNEX, instance_ids=[A], state=AnnexState.LAUNCHING)

    status, body = call(heartbeat_fn, load_event("heartbeat-ok"), at=fleet.t0 + timedelta(minutes=1))

    assert (status, body["action"]) == (200, "run")
    assert fleet.instance(ANNEX, A).instance.state == "running"


def test_a_same_second_duplicate_with_other_slot_counts_changes_nothing(fleet):
    # Given an instance whose report at `at` said 3 of 4 slots claimed
    annex, _ = fleet.annex(annex_id=ANNEX, instance_ids=[A])
    at = fleet.t0 + timedelta(minutes=1)
    fleet.heartbeat(annex, A, at=at, claimed=3, total=4)

    # When a second report lands in the same second with other counts (a retry, or a stale agent)
    fleet.heartbeat(annex, A, at=at, claimed=0, total=8)

    # Then the record keeps the first report: not idle, 3 of 4
    record = fleet.instance(ANNEX, A).instance
    assert (record.claimed_slots, record.total_slots, record.idle_since) == (3, 4, None)
    assert record.last_heartbeat_at == at
