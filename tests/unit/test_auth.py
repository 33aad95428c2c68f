import pytest
from annex.core.auth import caller_from_arn, is_admin
from annex.core.errors import Forbidden

ADMINS = ("PoolAdmin*", "arn:aws:iam::123456789012:user/root-of-pool")


@pytest.mark.parametrize(
    ("arn", "admin"),
    [
        ("arn:aws:sts::123456789012:assumed-role/PoolAdmin/carol", True),
        ("arn:aws:sts::123456789012:assumed-role/PoolAdminsEU/dave", True),
        ("arn:aws:iam::123456789012:user/root-of-pool", True),
        ("arn:aws:iam::123456789012:user/alice", False),
        ("arn:aws:iam::123456789012:role/PoolAdmin", False),  # a role ARN is not a session of it
        (
            "arn:aws:sts::123456789012:assumed-role/Researcher/PoolAdmin",
            False,
        ),  # session name is not the role
    ],
)
def test_admin_patterns_match_arns_and_role_names(arn, admin):
    assert is_admin(arn, ADMINS) is admin


def test_unsigned_callers_are_refused():
    with pytest.raises(Forbidden):
        caller_from_arn(None, ADMINS)
    with pytest.raises(Forbidden):
        caller_from_arn("anonymous", ADMINS)


def test_only_owner_or_admin_may_access():
    alice = caller_from_arn("arn:aws:iam::123456789012:user/alice", ADMINS)
    carol = caller_from_arn("arn:aws:sts::123456789012:assumed-role/PoolAdmin/carol", ADMINS)
    assert alice.may_access("arn:aws:iam::123456789012:user/alice")
    assert not alice.may_access("arn:aws:iam::123456789012:user/bob")
    assert carol.may_access("arn:aws:iam::123456789012:user/bob")
    assert carol.role_name == "PoolAdmin"
    assert carol.session_name == "carol"
