"""The request API against moto, with the table built from template.yaml."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from annex.aws import clients
from annex.core.auth import Caller
from annex.core.clock import parse_duration, parse_time, utcnow
from annex.core.models import CreateAnnexRequest
from annex_local.events import FakeContext, rest_event

from tests.integration.conftest import (
    ADMIN,
    ALICE,
    BOB,
    instance_states,
    run_tagged_instances,
    table_items,
)

BODY = {"name": "bio-run", "count": 2, "lease": "4h", "idle_timeout": "15m"}


def create(api, *, as_=ALICE, **overrides):
    status, body = api.call("POST", "/annexes", as_=as_, body={**BODY, **overrides})
    assert status == 201, body
    return body


# --- create ---------------------------------------------------------------------------------------


def test_create_returns_the_annex_and_records_it(api, ddb):
    # Given nothing, when alice requests an annex
    status, body = api.call("POST", "/annexes", body={**BODY, "tags": {"project": "bio"}})
    # Then she gets it back with the defaults filled in, and it is on record with its history
    assert status == 201
    assert body["id"].startswith("ax-")
    assert body["owner"] == ALICE
    assert body["state"] == "requested"
    assert body["instance_types"] == ["c7i.xlarge"]
    assert body["idle_timeout_seconds"] == 900
    lease = parse_time(body["lease_expires_at"]) - parse_time(body["created_at"])
    assert lease == timedelta(hours=4)
    status, detail = api.call("GET", f"/annexes/{body['id']}")
    assert status == 200
    assert detail["tags"] == {"project": "bio"}
    assert [e["action"] for e in detail["history"]] == ["requested"]
    assert detail["history"][0]["actor"] == ALICE


def test_same_client_token_returns_the_same_annex_and_creates_nothing(api, ddb):
    first = create(api, client_token="tok-1")
    before = table_items(ddb)
    status, again = api.call("POST", "/annexes", body={**BODY, "client_token": "tok-1"})
    assert status == 200
    assert again["id"] == first["id"]
    assert table_items(ddb) == before


def test_client_token_reused_for_a_different_request_is_refused(api, ddb):
    create(api, client_token="tok-1")
    before = table_items(ddb)
    status, body = api.call("POST", "/annexes", body={**BODY, "count": 3, "client_token": "tok-1"})
    assert status == 409
    assert body["fields"] == [{"field": "client_token", "reason": body["message"]}]
    assert table_items(ddb) == before


def test_another_owner_may_use_the_same_client_token(api):
    a = create(api, client_token="tok-1")
    b = create(api, as_=BOB, client_token="tok-1")
    assert a["id"] != b["id"]


def test_a_live_name_is_unique_per_owner_but_free_again_after_stop(api, ddb):
    first = create(api)
    status, body = api.call("POST", "/annexes", body=BODY)
    assert status == 409
    assert body["error"] == "NameInUse"
    assert body["fields"][0]["field"] == "name"
    # another owner may use the name
    create(api, as_=BOB)
    # after stopping, the name is free again
    assert api.call("POST", f"/annexes/{first['id']}/stop")[0] == 200
    create(api)


# --- list and get ---------------------------------------------------------------------------------


def create_at(api, at, *, as_=ALICE, **overrides):
    """Create through the request function's own service with its clock at `at` (the handler reads the
    wall clock, whose seconds two quick requests share)."""
    request = CreateAnnexRequest.model_validate({**BODY, **overrides})
    annex, created = api.module.service().create(Caller(arn=as_, owner=as_), request, now=at)
    assert created
    return annex


def test_a_live_annex_says_when_it_drains_and_an_ended_one_does_not(api, request_env):
    # Given the pool drains annexes DrainBeforeLeaseEnd before their lease ends
    lead = parse_duration(request_env["DRAIN_LEAD"])
    assert lead > timedelta(0)
    annex = create(api)
    # Then GET and the list both say when it stops starting jobs: its lease end minus that lead
    status, detail = api.call("GET", f"/annexes/{annex['id']}")
    assert status == 200
    assert parse_time(detail["drains_at"]) == parse_time(detail["lease_expires_at"]) - lead
    (listed,) = api.call("GET", "/annexes")[1]["annexes"]
    assert listed["drains_at"] == detail["drains_at"]
    # an extension moves it with the lease
    assert api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "1h"})[0] == 200
    extended = api.call("GET", f"/annexes/{annex['id']}")[1]
    assert parse_time(extended["drains_at"]) == parse_time(detail["drains_at"]) + timedelta(hours=1)
    # and once stopped it no longer drains
    status, stopped = api.call("POST", f"/annexes/{annex['id']}/stop")
    assert status == 200
    assert stopped["drains_at"] is None
    assert api.call("GET", f"/annexes/{annex['id']}")[1]["drains_at"] is None
    assert api.call("GET", "/annexes")[1]["annexes"][0]["drains_at"] is None


def test_list_shows_only_the_callers_annexes_newest_first(api):
    # Given three annexes of Alice's, created a second apart (not in that order), and one of Bob's
    t0 = utcnow()
    middle = create_at(api, t0, name="a1")
    newest = create_at(api, t0 + timedelta(seconds=1), name="a2")
    oldest = create_at(api, t0 - timedelta(seconds=1), name="a0")
    create_at(api, t0 + timedelta(seconds=2), as_=BOB, name="b1")

    # When Alice lists her annexes
    status, body = api.call("GET", "/annexes")

    # Then she sees exactly hers, the newest first
    assert status == 200
    assert [a["id"] for a in body["annexes"]] == [newest.id, middle.id, oldest.id]


def test_list_pages_with_next_token(api):
    ids = {create(api, name=f"n{i}", count=1)["id"] for i in range(5)}
    seen, token = [], None
    while True:
        query = {"limit": "2", **({"next_token": token} if token else {})}
        status, body = api.call("GET", "/annexes", query=query)
        assert status == 200
        assert len(body["annexes"]) <= 2
        seen += [a["id"] for a in body["annexes"]]
        token = body["next_token"]
        if not token:
            break
    assert sorted(seen) == sorted(ids)


def test_admin_lists_everyone_and_others_may_not(api):
    create(api, name="a1")
    create(api, as_=BOB, name="b1")
    status, body = api.call("GET", "/annexes", as_=ADMIN, query={"scope": "all"})
    assert status == 200
    assert {a["owner"] for a in body["annexes"]} == {ALICE, BOB}
    status, body = api.call("GET", "/annexes", as_=BOB, query={"scope": "all"})
    assert status == 403
    assert "administrators" in body["message"]


def test_a_stranger_gets_404_for_get_extend_and_stop_and_changes_nothing(api, ddb):
    annex = create(api)
    before = table_items(ddb)
    for method, path, body in [
        ("GET", f"/annexes/{annex['id']}", None),
        ("POST", f"/annexes/{annex['id']}/extend", {"by": "1h"}),
        ("POST", f"/annexes/{annex['id']}/stop", None),
    ]:
        status, resp = api.call(method, path, as_=BOB, body=body)
        assert status == 404, (path, resp)
        assert resp["error"] == "AnnexNotFound"
    assert table_items(ddb) == before


def test_admin_may_see_extend_and_stop_any_annex(api):
    annex = create(api)
    assert api.call("GET", f"/annexes/{annex['id']}", as_=ADMIN)[0] == 200
    assert api.call("POST", f"/annexes/{annex['id']}/extend", as_=ADMIN, body={"by": "1h"})[0] == 200
    status, stopped = api.call("POST", f"/annexes/{annex['id']}/stop", as_=ADMIN)
    assert status == 200
    assert stopped["state"] == "ended"
    assert stopped["history"][0]["actor"] == ADMIN  # newest first


# --- extend ---------------------------------------------------------------------------------------


def test_extend_by_adds_to_the_current_expiry(api):
    annex = create(api)
    status, body = api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "2h"})
    assert status == 200
    old, new = parse_time(annex["lease_expires_at"]), parse_time(body["annex"]["lease_expires_at"])
    assert new - old == timedelta(hours=2)
    assert body["capped"] is False
    assert body["annex"]["version"] == annex["version"] + 1


def test_extend_until_a_time(api):
    annex = create(api)
    target = parse_time(annex["lease_expires_at"]) + timedelta(hours=5)
    status, body = api.call("POST", f"/annexes/{annex['id']}/extend", body={"until": target.isoformat()})
    assert status == 200
    assert parse_time(body["annex"]["lease_expires_at"]) == target


def test_extend_is_capped_by_the_maximum_lease(api):
    annex = create(api)
    status, body = api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "3d"})
    assert status == 200
    assert body["capped"] is True
    remaining = parse_time(body["annex"]["lease_expires_at"]) - parse_time(body["annex"]["updated_at"])
    assert remaining == timedelta(hours=24)


def test_extend_moves_the_lease_tag_on_the_instances(api, ec2):
    annex = create(api)
    ids = run_tagged_instances(ec2, annex["id"], 2, lease=annex["lease_expires_at"])
    status, body = api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "1h"})
    assert status == 200
    resp = ec2.describe_instances(InstanceIds=ids)
    tags = [{t["Key"]: t["Value"] for t in i["Tags"]} for r in resp["Reservations"] for i in r["Instances"]]
    assert {t["annex:lease-expires"] for t in tags} == {body["annex"]["lease_expires_at"]}


def test_extend_moves_no_other_annexs_lease_tag(api, ec2):
    # Given two annexes of Alice's, each with running instances tagged with its own lease
    mine = create(api, name="mine")
    other = create(api, name="other")
    run_tagged_instances(ec2, mine["id"], 2, lease=mine["lease_expires_at"])
    theirs = run_tagged_instances(ec2, other["id"], 2, lease=other["lease_expires_at"])

    # When she extends one of them
    status, _body = api.call("POST", f"/annexes/{mine['id']}/extend", body={"by": "1h"})

    # Then the other annex's instances keep their own lease tag
    assert status == 200
    resp = ec2.describe_instances(InstanceIds=theirs)
    tags = [{t["Key"]: t["Value"] for t in i["Tags"]} for r in resp["Reservations"] for i in r["Instances"]]
    assert {t["annex:lease-expires"] for t in tags} == {other["lease_expires_at"]}


def test_extending_an_ended_annex_is_a_conflict(api, ddb):
    annex = create(api)
    api.call("POST", f"/annexes/{annex['id']}/stop")
    before = table_items(ddb)
    status, body = api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "1h"})
    assert status == 409
    assert body["error"] == "LeaseConflict"
    assert table_items(ddb) == before


# --- stop -----------------------------------------------------------------------------------------


def test_stop_ends_the_annex_and_terminates_its_instances_at_once(api, ec2):
    annex = create(api)
    mine = run_tagged_instances(ec2, annex["id"], 2)
    others = run_tagged_instances(ec2, "ax-00000000000000ff", 1)
    status, body = api.call("POST", f"/annexes/{annex['id']}/stop", body={"reason": "done early"})
    assert status == 200
    assert body["state"] == "ended"
    assert body["end_reason"] == "stopped"
    assert body["history"][0]["detail"] == "done early"  # newest first
    states = instance_states(ec2, mine + others)
    assert {states[i] for i in mine} <= {"shutting-down", "terminated"}
    assert states[others[0]] == "running"


def test_stop_twice_is_harmless(api):
    annex = create(api)
    assert api.call("POST", f"/annexes/{annex['id']}/stop")[0] == 200
    status, body = api.call("POST", f"/annexes/{annex['id']}/stop")
    assert status == 200
    assert body["state"] == "ended"
    assert [e["action"] for e in body["history"]].count("ended") == 1


def test_stop_releases_the_quota(api):
    # The integration policy allows 12 live instances per owner and 10 per annex.
    big = create(api, name="big", count=10)
    status, body = api.call("POST", "/annexes", body={**BODY, "name": "more", "count": 3})
    assert status == 409
    assert body["error"] == "QuotaExceeded"
    api.call("POST", f"/annexes/{big['id']}/stop")
    create(api, name="more", count=3)


# --- quota race -----------------------------------------------------------------------------------


def test_two_racing_creates_at_the_quota_edge_exactly_one_wins(api, ddb):
    """Both requests read the world before either writes (forced with a barrier), as two Lambda
    invocations racing would; the quota condition inside the write must let exactly one commit."""
    create(api, name="base", count=6)  # 6 of 12 used; each racer wants 6 more
    barrier = threading.Barrier(2, timeout=10)
    serial = threading.Lock()  # moto is not thread-safe; DynamoDB serializes transactions itself

    def before_write(**_kwargs):
        barrier.wait()  # both racers have done all their reads
        serial.acquire()

    def after_write(**_kwargs):
        serial.release()

    events = clients.dynamodb().meta.events
    events.register("before-call.dynamodb.TransactWriteItems", before_write)
    events.register("after-call.dynamodb.TransactWriteItems", after_write)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(
                pool.map(
                    lambda n: api.call("POST", "/annexes", body={**BODY, "name": n, "count": 6}), ["r1", "r2"]
                )
            )
    finally:
        events.unregister("before-call.dynamodb.TransactWriteItems", before_write)
        events.unregister("after-call.dynamodb.TransactWriteItems", after_write)
    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 409]
    loser = next(body for status, body in results if status == 409)
    assert loser["error"] == "QuotaExceeded"
    _, listing = api.call("GET", "/annexes")
    assert sum(a["count"] for a in listing["annexes"]) == 12


# --- bad input: a clear 4xx and nothing written ---------------------------------------------------

BAD = [
    # (method, path, body, expected status, field named in the error (None: no field))
    ("POST", "/annexes", None, 422, "body"),
    ("POST", "/annexes", "{not json", 400, None),
    ("POST", "/annexes", "[1, 2]", 422, "body"),
    ("POST", "/annexes", {"count": 1}, 422, "name"),
    ("POST", "/annexes", {"name": "x"}, 422, "count"),
    ("POST", "/annexes", {**BODY, "surprise": 1}, 422, "surprise"),
    ("POST", "/annexes", {**BODY, "count": 0}, 422, "count"),
    ("POST", "/annexes", {**BODY, "count": -3}, 422, "count"),
    ("POST", "/annexes", {**BODY, "count": "ten"}, 422, "count"),
    ("POST", "/annexes", {**BODY, "count": 11}, 422, "count"),
    ("POST", "/annexes", {**BODY, "count": 10**12}, 422, "count"),
    ("POST", "/annexes", {**BODY, "name": ""}, 422, "name"),
    ("POST", "/annexes", {**BODY, "name": "has space"}, 422, "name"),
    ("POST", "/annexes", {**BODY, "name": "x" * 64}, 422, "name"),
    ("POST", "/annexes", {**BODY, "name": "-starts-with-dash"}, 422, "name"),
    ("POST", "/annexes", {**BODY, "lease": "forever"}, 422, "lease"),
    ("POST", "/annexes", {**BODY, "lease": "-4h"}, 422, "lease"),
    ("POST", "/annexes", {**BODY, "lease": "30d"}, 422, "lease"),
    ("POST", "/annexes", {**BODY, "lease": "1m"}, 422, "lease"),
    ("POST", "/annexes", {**BODY, "idle_timeout": "1s"}, 422, "idle_timeout"),
    ("POST", "/annexes", {**BODY, "idle_timeout": "5h"}, 422, "idle_timeout"),
    ("POST", "/annexes", {**BODY, "instance_type": "p5.48xlarge"}, 422, "instance_type"),
    ("POST", "/annexes", {**BODY, "market": "reserved"}, 422, "market"),
    ("POST", "/annexes", {**BODY, "tags": {"aws:x": "1"}}, 422, "tags"),
    ("POST", "/annexes", {**BODY, "tags": {"annex:id": "forged"}}, 422, "tags"),
    ("POST", "/annexes", {**BODY, "tags": {f"k{i}": "v" for i in range(21)}}, 422, "tags"),
    ("POST", "/annexes", {**BODY, "tags": ["a"]}, 422, "tags"),
    ("POST", "/annexes", {**BODY, "client_token": "has spaces in it"}, 422, "client_token"),
    ("GET", "/annexes/not-an-id", None, 422, "annex_id"),
    ("GET", "/annexes/ax-0000000000000000", None, 404, None),
    ("POST", "/annexes/ax-0000000000000000/extend", {"by": "1h"}, 404, None),
    ("POST", "/annexes/ax-0000000000000000/stop", None, 404, None),
    ("POST", "/annexes/{id}/extend", {}, 422, "body"),
    ("POST", "/annexes/{id}/extend", {"by": "1h", "until": "2030-01-01T00:00:00Z"}, 422, "body"),
    ("POST", "/annexes/{id}/extend", {"by": "soon"}, 422, "by"),
    ("POST", "/annexes/{id}/extend", {"until": "2030-01-01T00:00:00"}, 422, "until"),
    ("POST", "/annexes/{id}/extend", {"until": "2000-01-01T00:00:00Z"}, 422, "until"),
    ("POST", "/annexes/{id}/extend", {"by": "1h", "extra": True}, 422, "extra"),
    ("POST", "/annexes/{id}/stop", {"reason": "x" * 201}, 422, "reason"),
    ("GET", "/annexes", {"limit": "0"}, 422, "limit"),
    ("GET", "/annexes", {"scope": "everything"}, 422, "scope"),
    ("GET", "/annexes", {"next_token": "!!garbage!!"}, 422, "next_token"),
    ("DELETE", "/annexes/{id}", None, 405, None),
    ("PUT", "/annexes", None, 405, None),
    ("GET", "/no/such/route", None, 404, None),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), BAD)
def test_bad_input_gets_a_clear_4xx_and_changes_nothing(api, ddb, method, path, body, status, field):
    existing = create(api, name="existing")
    path = path.replace("{id}", existing["id"])
    before = table_items(ddb)
    query = body if method == "GET" and isinstance(body, dict) else None
    code, resp = api.call(method, path, body=None if query else body, query=query)
    assert code == status, resp
    assert resp["error"], resp
    assert resp["message"], resp
    if field:
        assert field in [f["field"].split(".")[0] for f in resp["fields"]], resp
        assert all(f["reason"] for f in resp["fields"])
    assert table_items(ddb) == before


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "text/plain", "application/x-www-form-urlencoded", "application/xml"],
)
def test_a_body_that_is_not_json_gets_415_and_changes_nothing(api, ddb, content_type):
    before = table_items(ddb)
    event = rest_event(
        "POST", "/annexes", caller_arn=ALICE, body=json.dumps(BODY), headers={"Content-Type": content_type}
    )
    resp = api.module.handler(event, FakeContext())
    assert resp["statusCode"] == 415
    assert json.loads(resp["body"])["error"] == "UnsupportedMediaType"
    assert table_items(ddb) == before


def test_json_with_a_charset_is_json(api):
    event = rest_event(
        "POST",
        "/annexes",
        caller_arn=ALICE,
        body=json.dumps(BODY),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert api.module.handler(event, FakeContext())["statusCode"] == 201


@pytest.mark.parametrize(
    "content_type", ["application/merge-patch+json", "Application/JSON", "APPLICATION/JSON; charset=utf-8"]
)
def test_every_json_media_type_is_json(api, content_type):
    # The strict-input table: `application/*+json` is JSON and media types are case-blind; the resolver
    # behind the gate must not refuse what the gate accepted.
    event = rest_event(
        "POST", "/annexes", caller_arn=ALICE, body=json.dumps(BODY), headers={"Content-Type": content_type}
    )
    resp = api.module.handler(event, FakeContext())
    assert resp["statusCode"] == 201, resp


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_no_body_under_any_media_type_is_a_missing_body(api, ddb, content_type):
    # No body: its declared type does not matter; the answer names the missing body, as without a header.
    before = table_items(ddb)
    event = rest_event("POST", "/annexes", caller_arn=ALICE, headers={"Content-Type": content_type})
    resp = api.module.handler(event, FakeContext())
    body = json.loads(resp["body"])
    assert resp["statusCode"] == 422, resp
    assert body["error"] == "ValidationError", body
    assert [f["field"] for f in body["fields"]] == ["body"], body
    assert table_items(ddb) == before


def test_an_unsigned_request_is_refused(api, ddb):
    before = table_items(ddb)
    status, body = api.call("POST", "/annexes", as_=None, body=BODY)
    assert status == 403
    assert body["error"] == "Forbidden"
    assert table_items(ddb) == before


# --- health ---------------------------------------------------------------------------------------


def test_health_shows_limits_and_that_no_sweep_has_run_yet(api):
    status, body = api.call("GET", "/health")
    assert status == 200
    assert body["limits"]["max_instances_per_annex"] == 10
    assert body["limits"]["max_lease_seconds"] == 24 * 3600
    assert body["is_admin"] is False
    assert {s["name"]: s["last_success_at"] for s in body["sweeps"]} == {
        "lease-check": None,
        "idle-reap": None,
    }


def test_stop_only_touches_instances_of_this_stack(api, ec2):
    annex = create(api)
    foreign = run_tagged_instances(ec2, annex["id"], 1, stack="someone-elses-stack")
    api.call("POST", f"/annexes/{annex['id']}/stop")
    assert instance_states(ec2, foreign)[foreign[0]] == "running"


def test_history_keeps_the_order_of_events_within_one_second(api):
    annex = create(api)
    for _ in range(5):
        api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "5m"})
    _, stopped = api.call("POST", f"/annexes/{annex['id']}/stop")
    # newest first
    assert [e["action"] for e in stopped["history"]] == ["ended"] + ["extended"] * 5 + ["requested"]
