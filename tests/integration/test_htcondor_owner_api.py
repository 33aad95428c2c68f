"""The HTCondor user an annex runs jobs for, through the request API: validated, stored, answered."""

from __future__ import annotations

from tests.integration.conftest import ALICE

BODY = {"name": "bio-run", "count": 1, "lease": "4h"}
SSO_ALICE = "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Researcher_0a1b/alice@example.org"


def test_the_create_answer_and_the_record_carry_the_htcondor_user(api):
    status, created = api.call(
        "POST", "/annexes", body={**BODY, "condor_user": "rsmith", "share_with": ["bob"], "all_my_jobs": True}
    )

    assert status == 201, created
    assert (created["condor_user"], created["share_with"], created["all_my_jobs"]) == (
        "rsmith",
        ["bob"],
        True,
    )
    status, detail = api.call("GET", f"/annexes/{created['id']}")
    assert (detail["condor_user"], detail["share_with"], detail["all_my_jobs"]) == ("rsmith", ["bob"], True)


def test_without_condor_user_an_iam_user_name_is_used(api):
    status, created = api.call("POST", "/annexes", as_=ALICE, body=BODY)

    assert status == 201, created
    assert created["condor_user"] == ALICE.rsplit("/", 1)[1]


def test_an_sso_caller_without_condor_user_gets_a_4xx_naming_the_field_and_nothing_is_created(api):
    status, error = api.call("POST", "/annexes", as_=SSO_ALICE, body=BODY)

    assert 400 <= status < 500
    assert [f["field"] for f in error["fields"]] == ["condor_user"]
    status, listing = api.call("GET", "/annexes", as_=SSO_ALICE)
    assert listing["annexes"] == []


def test_an_email_as_condor_user_is_refused_naming_the_field(api):
    status, error = api.call(
        "POST", "/annexes", as_=SSO_ALICE, body={**BODY, "condor_user": "alice@example.org"}
    )

    assert status == 422
    assert "condor_user" in [f["field"] for f in error["fields"]]
