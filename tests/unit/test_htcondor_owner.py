"""Owner identity in HTCondor terms: which HTCondor user's jobs an annex runs is explicit, validated,
and the administrator's mapping wins."""

from __future__ import annotations

import pytest
from annex.api.policy import AnnexSpec, resolve_condor_user, resolve_owner
from annex.core.config import Policy
from annex.core.errors import PolicyViolation
from annex.core.models import CreateAnnexRequest
from pydantic import ValidationError

BASE = {
    "ALLOWED_INSTANCE_TYPES": "c7i.xlarge",
    "DEFAULT_INSTANCE_TYPE": "c7i.xlarge",
    "MAX_INSTANCES_PER_ANNEX": "10",
    "MAX_LIVE_INSTANCES_PER_OWNER": "20",
    "MAX_LIVE_INSTANCES": "100",
    "MAX_LEASE": "24h",
    "DEFAULT_LEASE": "4h",
    "MIN_LEASE": "10m",
    "DEFAULT_IDLE_TIMEOUT": "20m",
    "MIN_IDLE_TIMEOUT": "5m",
    "MIN_EXTENSION": "5m",
}
POLICY = Policy.from_env(BASE)
MAPPED = Policy.from_env(
    {
        **BASE,
        "CONDOR_USER_MAP": "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_*/alice@example.org=alice",
    }
)
SSO_ALICE = "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Researcher_0a1b/alice@example.org"
IAM_BOB = "arn:aws:iam::123456789012:user/bob"


def test_an_iam_user_name_that_is_a_login_is_the_default():
    assert resolve_condor_user(IAM_BOB, None, POLICY) == "bob"


def test_the_request_names_the_htcondor_user():
    assert resolve_condor_user(IAM_BOB, "rsmith", POLICY) == "rsmith"


def test_an_sso_owner_must_say_which_htcondor_user_runs_the_jobs():
    with pytest.raises(PolicyViolation) as caught:
        resolve_condor_user(SSO_ALICE, None, POLICY)

    assert caught.value.field == "condor_user"
    assert "login name on the access point" in str(caught.value)
    assert resolve_condor_user(SSO_ALICE, "alice", POLICY) == "alice"


def test_the_administrators_mapping_wins_and_a_different_request_is_refused():
    assert resolve_condor_user(SSO_ALICE, None, MAPPED) == "alice"
    assert resolve_condor_user(SSO_ALICE, "alice", MAPPED) == "alice"
    with pytest.raises(PolicyViolation) as caught:
        resolve_condor_user(SSO_ALICE, "bob", MAPPED)
    assert caught.value.field == "condor_user"
    assert "maps you to the HTCondor user 'alice'" in str(caught.value)


def test_sharing_with_oneself_is_refused():
    spec = AnnexSpec(
        name="run",
        count=1,
        instance_types=("c7i.xlarge",),
        market=CreateAnnexRequest(name="r", count=1).market,
        lease=POLICY.default_lease,
        idle_timeout=POLICY.default_idle_timeout,
        tags={},
        share_with=("bob",),
    )
    with pytest.raises(PolicyViolation) as caught:
        resolve_owner(spec, IAM_BOB, None, POLICY)
    assert caught.value.field == "share_with"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"condor_user": "alice@example.org"}, "condor_user"),
        ({"condor_user": "alice\nSTART = True"}, "condor_user"),
        ({"condor_user": "-rf"}, "condor_user"),
        ({"share_with": ["bob", "bob"]}, "share_with"),
        ({"share_with": ["bob,carol"]}, "share_with"),
        ({"share_with": [f"u{i}" for i in range(21)]}, "share_with"),
        ({"all_my_jobs": "yes please"}, "all_my_jobs"),
    ],
)
def test_the_request_model_refuses_what_is_not_an_htcondor_user(body, field):
    with pytest.raises(ValidationError) as caught:
        CreateAnnexRequest.model_validate({"name": "run", "count": 1, **body})

    assert caught.value.errors()[0]["loc"][0] == field


def test_a_malformed_mapping_fails_the_cold_start_naming_it():
    with pytest.raises(ValidationError, match="CONDOR_USER_MAP"):
        Policy.from_env({**BASE, "CONDOR_USER_MAP": "arn:aws:iam::123456789012:user/alice=alice@example.org"})
