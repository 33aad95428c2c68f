"""Extend amplification (issue 11, item 7): a lease moves by at least MinExtension, a retried extension
(same client token) makes no second event, and GET /annexes/{id} pages its history newest first with a
sealed token bound to the caller and the annex."""

from __future__ import annotations

from collections import Counter

import pytest
from annex.aws import clients

from tests.integration.conftest import ADMIN, BOB, run_tagged_instances, table_items

BODY = {"name": "amp", "count": 2, "lease": "4h", "idle_timeout": "15m"}


def create(api, **overrides):
    status, body = api.call("POST", "/annexes", body={**BODY, **overrides})
    assert status == 201, body
    return body


@pytest.fixture
def ec2_calls(api):
    """Every EC2 operation the request function makes, by name."""
    calls: Counter[str] = Counter()
    clients.ec2().meta.events.register("before-call.ec2", lambda model, **_: calls.update([model.name]))
    return calls


def events(api, annex_id, action):
    _, detail = api.call("GET", f"/annexes/{annex_id}", query={"history_limit": "100"})
    return [e for e in detail["history"] if e["action"] == action]


# --- the minimum step ------------------------------------------------------------------------------


def test_200_one_second_extends_are_refused_and_cost_no_event_and_no_ec2_call(api, ddb, ec2, ec2_calls):
    annex = create(api)
    run_tagged_instances(ec2, annex["id"], 2, lease=annex["lease_expires_at"])
    before = table_items(ddb)
    ec2_calls.clear()

    answers = [api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "1s"}) for _ in range(200)]

    assert {status for status, _ in answers} == {422}
    fields = answers[0][1]["fields"]
    assert [f["field"] for f in fields] == ["by"]
    assert "at least 5m (MinExtension)" in fields[0]["reason"]
    assert table_items(ddb) == before  # no history event, no lease move
    assert sum(ec2_calls.values()) == 0


def test_an_extension_of_the_minimum_step_moves_the_lease_once_with_one_event(api, ec2, ec2_calls):
    annex = create(api)
    run_tagged_instances(ec2, annex["id"], 2, lease=annex["lease_expires_at"])
    ec2_calls.clear()
    status, body = api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "5m"})
    assert status == 200, body
    assert body["annex"]["lease_expires_at"] > annex["lease_expires_at"]
    assert len(events(api, annex["id"], "extended")) == 1
    assert ec2_calls == Counter({"DescribeInstances": 1, "CreateTags": 1})


def test_an_extension_within_the_step_of_the_cap_is_refused(api, ddb):
    annex = create(api, lease="23h58m")  # the cap is 24h ahead: only ~2m of room
    before = table_items(ddb)
    status, body = api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "1h"})
    assert status == 422
    assert body["fields"][0]["field"] == "by"
    assert "MinExtension" in body["fields"][0]["reason"]
    assert table_items(ddb) == before


def test_a_shortening_smaller_than_the_step_is_refused(api, ddb):
    annex = create(api)
    before = table_items(ddb)
    status, body = api.call("POST", f"/annexes/{annex['id']}/shorten", body={"to": "3h59m"})
    assert status == 422
    assert body["fields"][0]["field"] == "to"
    assert "at least 5m (MinExtension)" in body["fields"][0]["reason"]
    assert table_items(ddb) == before


# --- idempotent retries ----------------------------------------------------------------------------


def test_a_retried_extension_with_its_client_token_moves_the_lease_once(api, ddb, ec2, ec2_calls):
    annex = create(api)
    run_tagged_instances(ec2, annex["id"], 2, lease=annex["lease_expires_at"])
    body = {"by": "1h", "client_token": "ext-1"}
    first_status, first = api.call("POST", f"/annexes/{annex['id']}/extend", body=body)
    assert first_status == 200, first
    items = table_items(ddb)
    ec2_calls.clear()

    again_status, again = api.call("POST", f"/annexes/{annex['id']}/extend", body=body)

    assert again_status == 200, again
    assert again["annex"]["lease_expires_at"] == first["annex"]["lease_expires_at"]
    assert "already made" in again["message"]
    assert table_items(ddb) == items  # no second event, no second move
    assert len(events(api, annex["id"], "extended")) == 1
    assert ec2_calls == Counter({"DescribeInstances": 1})  # the tag is checked, already in step


def test_a_retried_extension_that_reached_the_cap_answers_as_the_first_did(api, ddb):
    # Given an extension cut to the maximum lease, whose answer was lost
    annex = create(api)
    body = {"by": "3d", "client_token": "ext-cap"}
    assert api.call("POST", f"/annexes/{annex['id']}/extend", body=body)[0] == 200
    items = table_items(ddb)
    # When the client retries it, the lease now at the cap
    status, again = api.call("POST", f"/annexes/{annex['id']}/extend", body=body)
    # Then it is answered as done (not refused as "within MinExtension of the cap"), and nothing changes
    assert status == 200, again
    assert "already made" in again["message"]
    assert table_items(ddb) == items


def test_a_client_token_reused_for_another_extension_is_refused(api, ddb):
    annex = create(api)
    api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "1h", "client_token": "ext-1"})
    items = table_items(ddb)
    status, body = api.call(
        "POST", f"/annexes/{annex['id']}/extend", body={"by": "2h", "client_token": "ext-1"}
    )
    assert status == 409
    assert body["fields"][0]["field"] == "client_token"
    assert table_items(ddb) == items


def test_the_same_client_token_on_another_annex_is_another_extension(api):
    one, two = create(api, name="one"), create(api, name="two")
    for annex in (one, two):
        status, body = api.call(
            "POST", f"/annexes/{annex['id']}/extend", body={"by": "1h", "client_token": "ext-1"}
        )
        assert status == 200
        assert body["annex"]["lease_expires_at"] > annex["lease_expires_at"]


# --- history paging --------------------------------------------------------------------------------


def extended_n_times(api, n):
    annex = create(api)
    for _ in range(n):
        status, body = api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "5m"})
        assert status == 200, body
    return annex


def test_history_comes_newest_first_in_pages_of_50_and_the_token_reads_the_rest(api):
    annex = extended_n_times(api, 60)  # 61 events with "requested"

    status, first = api.call("GET", f"/annexes/{annex['id']}")
    assert status == 200
    assert len(first["history"]) == 50
    assert first["history"][0]["action"] == "extended"
    ats = [e["at"] for e in first["history"]]
    assert ats == sorted(ats, reverse=True)
    assert first["history_next_token"]

    status, rest = api.call(
        "GET", f"/annexes/{annex['id']}", query={"history_next_token": first["history_next_token"]}
    )
    assert status == 200, rest
    assert len(rest["history"]) == 11
    assert rest["history"][-1]["action"] == "requested"
    assert rest["history_next_token"] is None
    assert rest["history"][0]["at"] <= first["history"][-1]["at"]


def test_history_limit_sets_the_page_size(api):
    annex = extended_n_times(api, 3)
    _, page = api.call("GET", f"/annexes/{annex['id']}", query={"history_limit": "2"})
    assert [e["action"] for e in page["history"]] == ["extended", "extended"]
    _, last = api.call(
        "GET",
        f"/annexes/{annex['id']}",
        query={"history_limit": "2", "history_next_token": page["history_next_token"]},
    )
    assert [e["action"] for e in last["history"]] == ["extended", "requested"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"history_next_token": "eyJwayI6IHt9fQ.AAAAAAAAAAAAAAAAAAAAAA"}, "history_next_token"),
        ({"history_next_token": "not-a-token"}, "history_next_token"),
        ({"history_limit": "0"}, "history_limit"),
        ({"history_limit": "101"}, "history_limit"),
        ({"history_page": "2"}, "history_page"),
    ],
)
def test_bad_history_parameters_are_refused_naming_the_field(api, query, field):
    annex = create(api)
    status, body = api.call("GET", f"/annexes/{annex['id']}", query=query)
    assert status == 422, body
    assert [f["field"] for f in body["fields"]] == [field]


def test_a_history_token_works_only_for_its_annex_and_its_caller(api):
    mine = extended_n_times(api, 2)
    other = create(api, name="other")
    _, page = api.call("GET", f"/annexes/{mine['id']}", query={"history_limit": "1"})
    token = page["history_next_token"]
    assert token

    # another annex of the same caller
    status, body = api.call("GET", f"/annexes/{other['id']}", query={"history_next_token": token})
    assert (status, body["fields"][0]["field"]) == (422, "history_next_token")
    # the same annex, another caller who may see it (an administrator)
    status, body = api.call("GET", f"/annexes/{mine['id']}", as_=ADMIN, query={"history_next_token": token})
    assert (status, body["fields"][0]["field"]) == (422, "history_next_token")
    # as a list token
    status, body = api.call("GET", "/annexes", query={"next_token": token})
    assert (status, body["fields"][0]["field"]) == (422, "next_token")
    # a stranger: refused before the annex is read, as for an annex that does not exist
    status, body = api.call("GET", f"/annexes/{mine['id']}", as_=BOB, query={"history_next_token": token})
    assert (status, body["fields"][0]["field"]) == (422, "history_next_token")
