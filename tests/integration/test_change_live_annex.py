"""Changing a live annex through the API: shorten its lease, change its idle timeout."""

from __future__ import annotations

from datetime import timedelta

import pytest
from annex.core.clock import parse_time, utcnow
from annex.store import AnnexStore

from tests.integration.conftest import ADMIN, ALICE, BOB, TABLE, run_tagged_instances, table_items

BODY = {"name": "bio-run", "count": 2, "lease": "4h", "idle_timeout": "15m"}


def create(api, *, as_=ALICE, **overrides):
    status, body = api.call("POST", "/annexes", as_=as_, body={**BODY, **overrides})
    assert status == 201, body
    return body


def lease_tags(ec2, ids):
    resp = ec2.describe_instances(InstanceIds=ids)
    return {
        t["Value"]
        for r in resp["Reservations"]
        for i in r["Instances"]
        for t in i["Tags"]
        if t["Key"] == "annex:lease-expires"
    }


def test_shorten_to_moves_the_expiry_the_due_index_and_the_lease_tag(api, ddb, ec2):
    annex = create(api)
    ids = run_tagged_instances(ec2, annex["id"], 2, lease=annex["lease_expires_at"])
    before = utcnow()
    status, body = api.call("POST", f"/annexes/{annex['id']}/shorten", body={"to": "1h"})
    assert status == 200, body
    new = parse_time(body["lease_expires_at"])
    assert before + timedelta(hours=1) <= new <= utcnow() + timedelta(hours=1)
    assert body["version"] == annex["version"] + 1
    assert lease_tags(ec2, ids) == {body["lease_expires_at"]}
    store = AnnexStore(ddb, TABLE)  # the lease-check finds it due at the new expiry, not before
    assert annex["id"] in set(store.due_leases(now=new))
    assert annex["id"] not in set(store.due_leases(now=new - timedelta(seconds=1)))
    _, detail = api.call("GET", f"/annexes/{annex['id']}")
    assert detail["history"][0]["action"] == "shortened"
    assert detail["history"][0]["actor"] == ALICE


def test_shorten_until_a_time(api):
    annex = create(api)
    target = parse_time(annex["lease_expires_at"]) - timedelta(hours=2)
    status, body = api.call("POST", f"/annexes/{annex['id']}/shorten", body={"until": target.isoformat()})
    assert status == 200, body
    assert parse_time(body["lease_expires_at"]) == target


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": "5h"}, "to"),  # longer than the current lease: that is extend
        ({"to": "1m"}, "to"),  # below the minimum lease
        ({"to": "abc"}, "to"),
        ({"to": 3600}, "to"),
        ({}, ""),
        ({"to": "1h", "until": "2030-01-01T00:00:00Z"}, ""),
        ({"to": "1h", "extra": 1}, "extra"),
    ],
)
def test_bad_shorten_is_refused_naming_the_field_and_changes_nothing(api, ddb, body, field):
    annex = create(api)
    before = table_items(ddb)
    status, resp = api.call("POST", f"/annexes/{annex['id']}/shorten", body=body)
    assert status in (400, 422), resp
    if field:
        assert field in {f["field"].split(".")[-1] for f in resp["fields"]}, resp
    assert table_items(ddb) == before


def test_set_idle_timeout_changes_the_record_and_the_history(api):
    annex = create(api)
    status, body = api.call("POST", f"/annexes/{annex['id']}/idle-timeout", body={"idle_timeout": "45m"})
    assert status == 200, body
    assert body["idle_timeout_seconds"] == 45 * 60
    _, detail = api.call("GET", f"/annexes/{annex['id']}")
    assert detail["idle_timeout_seconds"] == 45 * 60
    assert detail["history"][0]["action"] == "idle-timeout"


@pytest.mark.parametrize("value", ["1s", "30d", "", "soon", 600])
def test_bad_idle_timeout_is_refused_naming_the_field_and_changes_nothing(api, ddb, value):
    annex = create(api)
    before = table_items(ddb)
    status, resp = api.call("POST", f"/annexes/{annex['id']}/idle-timeout", body={"idle_timeout": value})
    assert status in (400, 422), resp
    assert "idle_timeout" in {f["field"].split(".")[-1] for f in resp["fields"]}, resp
    assert table_items(ddb) == before


def test_a_stranger_gets_404_and_changes_nothing_but_an_admin_may(api, ddb):
    annex = create(api)
    before = table_items(ddb)
    for path, body in [("shorten", {"to": "1h"}), ("idle-timeout", {"idle_timeout": "30m"})]:
        status, resp = api.call("POST", f"/annexes/{annex['id']}/{path}", as_=BOB, body=body)
        assert status == 404, resp
        assert resp["error"] == "AnnexNotFound"
    assert table_items(ddb) == before
    for path, body in [("shorten", {"to": "1h"}), ("idle-timeout", {"idle_timeout": "30m"})]:
        assert api.call("POST", f"/annexes/{annex['id']}/{path}", as_=ADMIN, body=body)[0] == 200


def test_an_ended_annex_cannot_be_changed(api, ddb):
    annex = create(api)
    api.call("POST", f"/annexes/{annex['id']}/stop")
    before = table_items(ddb)
    for path, body in [("shorten", {"to": "1h"}), ("idle-timeout", {"idle_timeout": "30m"})]:
        status, resp = api.call("POST", f"/annexes/{annex['id']}/{path}", body=body)
        assert status == 409, resp
        assert resp["error"] == "LeaseConflict"
    assert table_items(ddb) == before


def test_a_name_that_looks_like_an_annex_id_is_refused(api, ddb):
    before = table_items(ddb)
    status, resp = api.call("POST", "/annexes", body={**BODY, "name": "ax-0123456789abcdef"})
    assert status == 422, resp
    assert "name" in {f["field"].split(".")[-1] for f in resp["fields"]}
    assert table_items(ddb) == before
    create(api, name="ax-0123456789abcdeX")  # only the exact look-alike is refused
