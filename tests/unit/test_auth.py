"""The identity model: who owns what a caller creates, for every setup the README recommends, and which
callers are refused because their ARN does not name one person."""

import pytest
from annex.core.auth import Caller, IdentityPolicy, caller_from_arn, is_admin
from annex.core.errors import Forbidden

ACCT = "123456789012"
ADMINS = ("PoolAdmin*", f"arn:aws:iam::{ACCT}:user/root-of-pool")
POLICY = IdentityPolicy(
    admin_principals=ADMINS, session_bound_roles=("Researcher*",), shared_instance_roles=("HeadNode",)
)
SSO_ROLE = "AWSReservedSSO_Researchers_0123456789abcdef"


def session(role: str, name: str) -> str:
    return f"arn:aws:sts::{ACCT}:assumed-role/{role}/{name}"


@pytest.mark.parametrize(
    ("arn", "admin"),
    [
        (session("PoolAdmin", "carol"), True),
        (session("PoolAdminsEU", "dave"), True),
        (f"arn:aws:iam::{ACCT}:user/root-of-pool", True),
        (f"arn:aws:iam::{ACCT}:user/alice", False),
        (f"arn:aws:iam::{ACCT}:role/PoolAdmin", False),  # a role ARN is not a session of it
        (session("Researcher", "PoolAdmin"), False),  # the session name is not the role
    ],
)
def test_admin_patterns_match_arns_and_role_names(arn, admin):
    assert is_admin(arn, ADMINS) is admin


def test_unsigned_callers_are_refused():
    with pytest.raises(Forbidden):
        caller_from_arn(None, POLICY)
    with pytest.raises(Forbidden):
        caller_from_arn("anonymous", POLICY)


@pytest.mark.parametrize(
    ("arn", "owner"),
    [
        # IAM users: the user ARN (with its path).
        (f"arn:aws:iam::{ACCT}:user/alice", f"arn:aws:iam::{ACCT}:user/alice"),
        (f"arn:aws:iam::{ACCT}:user/hpc/bob", f"arn:aws:iam::{ACCT}:user/hpc/bob"),
        # IAM Identity Center: the user name, whatever the permission set (its role suffix changes).
        (session(SSO_ROLE, "alice@example.org"), f"identity-center:{ACCT}:alice@example.org"),
        (
            session("AWSReservedSSO_Admins_fedcba9876543210", "alice@example.org"),
            f"identity-center:{ACCT}:alice@example.org",
        ),
        # A role whose trust policy binds the session name: the session ARN.
        (session("Researcher", "alice"), session("Researcher", "alice")),
        (session("ResearcherEU", "alice"), session("ResearcherEU", "alice")),
        # An allowed shared instance role: the role, whichever instance signs.
        (session("HeadNode", "i-0123456789abcdef0"), f"arn:aws:iam::{ACCT}:role/HeadNode"),
        (session("HeadNode", "i-0fedcba9876543210"), f"arn:aws:iam::{ACCT}:role/HeadNode"),
        # An administrator's unbound role: the role (administrators see everything anyway).
        (session("PoolAdmin", "carol"), f"arn:aws:iam::{ACCT}:role/PoolAdmin"),
        # Another partition keeps its own.
        (
            "arn:aws-us-gov:sts::123456789012:assumed-role/HeadNode/i-0abc12345",
            "arn:aws-us-gov:iam::123456789012:role/HeadNode",
        ),
    ],
)
def test_each_recommended_setup_gets_a_canonical_owner(arn, owner):
    assert caller_from_arn(arn, POLICY).owner == owner


def test_a_session_name_chosen_by_the_caller_cannot_take_another_owners_annexes():
    # Given alice's annex, owned through a session-bound role
    alice = caller_from_arn(session("Researcher", "alice"), POLICY)
    # When someone assumes an unlisted shared role as "alice", they are refused outright
    with pytest.raises(Forbidden, match="SessionBoundRoles"):
        caller_from_arn(session("SharedResearch", "alice"), POLICY)
    # and a different bound session is a different owner
    bob = caller_from_arn(session("Researcher", "bob"), POLICY)
    assert not bob.may_access(alice.owner)
    assert alice.may_access(alice.owner)


def test_four_session_names_of_an_unbound_role_are_not_four_owners():
    for name in ("alice", "alice-2", "alice-3", "alice-4"):
        with pytest.raises(Forbidden):
            caller_from_arn(session("SharedResearch", name), POLICY)


@pytest.mark.parametrize(
    ("arn", "says"),
    [
        (session("SharedResearch", "alice"), "SessionBoundRoles"),
        (session("SomeHeadNode", "i-0123456789abcdef0"), "SharedInstanceRoles"),
        (f"arn:aws:sts::{ACCT}:federated-user/alice", "IAM user"),
        (f"arn:aws:iam::{ACCT}:root", "IAM user"),
    ],
)
def test_ambiguous_callers_are_refused_with_what_to_configure(arn, says):
    with pytest.raises(Forbidden, match=says):
        caller_from_arn(arn, POLICY)


def test_an_instance_role_is_refused_unless_an_administrator_allows_it():
    head_node = session("HeadNode", "i-0123456789abcdef0")
    with pytest.raises(Forbidden, match="SharedInstanceRoles"):
        caller_from_arn(head_node, IdentityPolicy(admin_principals=ADMINS))
    assert caller_from_arn(head_node, POLICY).owner == f"arn:aws:iam::{ACCT}:role/HeadNode"


def test_only_owner_or_admin_may_access():
    alice = caller_from_arn(f"arn:aws:iam::{ACCT}:user/alice", POLICY)
    carol = caller_from_arn(session("PoolAdmin", "carol"), POLICY)
    assert alice.may_access(f"arn:aws:iam::{ACCT}:user/alice")
    assert not alice.may_access(f"arn:aws:iam::{ACCT}:user/bob")
    assert carol.may_access(f"arn:aws:iam::{ACCT}:user/bob")
    assert carol.role_name == "PoolAdmin"
    assert carol.session_name == "carol"
    assert isinstance(carol, Caller)


def test_an_identity_center_user_keeps_her_annexes_across_permission_sets_and_shared_node_sessions():
    # Given an annex created through one permission set, and one from a shared head node
    first = caller_from_arn(session(SSO_ROLE, "alice@example.org"), POLICY)
    node = caller_from_arn(session("HeadNode", "i-0123456789abcdef0"), POLICY)
    # When she comes back through another permission set, or the node is replaced
    again = caller_from_arn(session("AWSReservedSSO_Big_fedcba9876543210", "alice@example.org"), POLICY)
    replaced = caller_from_arn(session("HeadNode", "i-0fedcba9876543210"), POLICY)
    # Then each still reaches what it owns
    assert again.may_access(first.owner)
    assert replaced.may_access(node.owner)
    assert not again.may_access(node.owner)
