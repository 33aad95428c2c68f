"""The stack-wide cap (MaxLiveInstances): enforced in the same transaction as the owner's quota, and
released wherever an owner's units are."""

from __future__ import annotations

import pytest

from tests.integration.conftest import ALICE, BOB

BODY = {"name": "run", "count": 2, "lease": "4h", "idle_timeout": "15m"}
STACK_LIMIT = 14  # the integration policy allows 12 per owner, 10 per annex


@pytest.fixture
def capped(request, request_env, monkeypatch):
    monkeypatch.setenv("MAX_LIVE_INSTANCES", str(STACK_LIMIT))
    return request.getfixturevalue("api")


def create(api, *, as_, name, count):
    return api.call("POST", "/annexes", as_=as_, body={**BODY, "name": name, "count": count})


def test_the_stack_limit_refuses_a_create_that_each_owner_could_afford(capped):
    assert create(capped, as_=ALICE, name="a", count=10)[0] == 201
    assert create(capped, as_=BOB, name="b", count=4)[0] == 201  # 14 of 14: exactly at the limit
    status, body = create(capped, as_=BOB, name="c", count=1)  # bob holds 4 of his 12
    assert status == 409
    assert body["error"] == "QuotaExceeded"
    assert f"limit of {STACK_LIMIT}" in body["message"]
    assert "MaxLiveInstances" in body["message"]
    _, listing = capped.call("GET", "/annexes", as_=BOB)
    assert [a["name"] for a in listing["annexes"]] == ["b"]  # the refused create wrote nothing


def test_stopping_an_annex_gives_its_units_back_to_the_stack_once(capped):
    _, big = create(capped, as_=ALICE, name="a", count=10)
    assert create(capped, as_=BOB, name="b", count=4)[0] == 201
    assert create(capped, as_=BOB, name="c", count=3)[0] == 409
    for _ in range(2):  # a repeated stop must not give the units back twice
        assert capped.call("POST", f"/annexes/{big['id']}/stop", as_=ALICE)[0] == 200
    assert create(capped, as_=BOB, name="c", count=8)[0] == 201  # 12 of 14
    status, body = create(capped, as_=ALICE, name="d", count=3)  # alice holds none; 15 > 14
    assert status == 409
    assert "MaxLiveInstances" in body["message"]
    assert create(capped, as_=ALICE, name="d", count=2)[0] == 201
