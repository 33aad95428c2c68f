"""Who is calling, who owns what they create, and what they may see.

The caller's ARN comes from API Gateway's IAM authorizer (`requestContext.identity.userArn`): the
session ARN `arn:aws:sts::<account>:assumed-role/<role>/<session>` for a role, the user ARN for an IAM
user. The session name of an ordinary role is chosen by whoever calls `sts:AssumeRole`, so it proves
nothing; an owner is derived only where the name is bound to a person:

- IAM user: its user ARN.
- IAM Identity Center (`AWSReservedSSO_*` roles; the session name is the Identity Center user name):
  `identity-center:<account>:<user name>`, the same person under every permission set.
- A role in SessionBoundRoles (its trust policy binds `sts:RoleSessionName`): the session ARN.
- A role in SharedInstanceRoles (a shared head node, a seed node): the role ARN; everyone using that
  node's credentials is one owner.
- A session of an AdminPrincipals role that fits none of the above: the role ARN.
- Any other assumed role, a federated user, the account root: refused (403), naming what to configure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from annex.core.errors import Forbidden

_ASSUMED_ROLE = re.compile(r"^arn:(aws[\w-]*):sts::(\d{12}):assumed-role/([^/]+)/(.+)$")
_IAM_USER = re.compile(r"^arn:(aws[\w-]*):iam::(\d{12}):user/(?:[^/]+/)*[^/]+$")
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
# IAM Identity Center names the roles of permission sets AWSReservedSSO_<set>_<suffix> (IAM refuses to
# modify them) and the session after the Identity Center user name, which the caller cannot choose.
IDENTITY_CENTER_ROLES = "AWSReservedSSO_*"


@dataclass(frozen=True)
class IdentityPolicy:
    """The administrator's identity parameters: AdminPrincipals, SessionBoundRoles, SharedInstanceRoles."""

    admin_principals: tuple[str, ...] = ()
    session_bound_roles: tuple[str, ...] = ()
    shared_instance_roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Caller:
    arn: str  # who signed the request (kept in history as the actor)
    owner: str  # the canonical identity that owns what this caller creates
    is_admin: bool = False

    @property
    def role_name(self) -> str | None:
        match = _ASSUMED_ROLE.match(self.arn)
        return match.group(3) if match else None

    @property
    def session_name(self) -> str | None:
        match = _ASSUMED_ROLE.match(self.arn)
        return match.group(4) if match else None

    def may_access(self, owner: str) -> bool:
        return self.is_admin or owner == self.owner


def _role_matches(role: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(role, p) for p in patterns if p)


def is_admin(arn: str, patterns: tuple[str, ...]) -> bool:
    """An entry with a ':' is an ARN pattern (fnmatch); otherwise it is a role-name pattern that matches
    any session of an assumed role with that name (`AnnexAdmin`, `PoolAdmin*`)."""
    match = _ASSUMED_ROLE.match(arn)
    role = match.group(3) if match else None
    for pattern in patterns:
        if ":" in pattern:
            if fnmatchcase(arn, pattern):
                return True
        elif role is not None and pattern and fnmatchcase(role, pattern):
            return True
    return False


def _unbound_role_message(role: str, session: str) -> str:
    if _INSTANCE_ID.match(session):
        return (
            f"role {role} looks like an EC2 instance role (session {session}); annex cannot tell apart the "
            f"people using that instance. An administrator may list {role} in the SharedInstanceRoles "
            "parameter, and everyone on that instance then shares one owner and one quota"
        )
    return (
        f"role {role} lets its callers choose their session name ({session}), so annex cannot tell who "
        "you are. An administrator must bind session names in the role's trust policy "
        "(sts:RoleSessionName = ${aws:username}, see the README's Security model) and list it in the "
        "SessionBoundRoles parameter, or you call as your IAM user or through IAM Identity Center"
    )


def caller_from_arn(arn: str | None, identity: IdentityPolicy) -> Caller:
    """The caller and its owner, or Forbidden (403) when the ARN does not name one person."""
    if not arn or not arn.startswith("arn:"):
        raise Forbidden("the request was not signed by an IAM identity")
    admin = is_admin(arn, identity.admin_principals)
    if _IAM_USER.match(arn):
        return Caller(arn=arn, owner=arn, is_admin=admin)
    match = _ASSUMED_ROLE.match(arn)
    if match is None:
        if ":root" in arn or ":federated-user/" in arn:
            raise Forbidden(
                f"{arn} cannot use annex: call as an IAM user, through IAM Identity Center, or with a role "
                "listed in SessionBoundRoles"
            )
        raise Forbidden(f"annex does not know how to tell who {arn} is")
    partition, account, role, session = match.groups()
    role_arn = f"arn:{partition}:iam::{account}:role/{role}"
    if _role_matches(role, identity.shared_instance_roles):
        return Caller(arn=arn, owner=role_arn, is_admin=admin)
    if fnmatchcase(role, IDENTITY_CENTER_ROLES):
        return Caller(arn=arn, owner=f"identity-center:{account}:{session}", is_admin=admin)
    if _role_matches(role, identity.session_bound_roles):
        return Caller(arn=arn, owner=arn, is_admin=admin)
    if admin:
        return Caller(arn=arn, owner=role_arn, is_admin=True)
    raise Forbidden(_unbound_role_message(role, session))


def authorize_instance_report(arn: str | None, *, role_name: str, instance_id: str) -> None:
    """Only an instance may report for itself: the caller must be a session of the annex instance role
    (EC2 names instance-profile sessions with the instance id) whose session name is `instance_id`."""
    match = _ASSUMED_ROLE.match(arn or "")
    if match is None or match.group(3) != role_name:
        raise Forbidden("only an annex instance, signing with its instance role, may report a heartbeat")
    if match.group(4) != instance_id:
        raise Forbidden(f"instance {match.group(4)} may not report a heartbeat for {instance_id}")
