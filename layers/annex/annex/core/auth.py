"""Who is calling, and what they may see. The caller's ARN comes from API Gateway's IAM authorizer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from annex.core.errors import Forbidden

_ASSUMED_ROLE = re.compile(r"^arn:aws[\w-]*:sts::(\d{12}):assumed-role/([^/]+)/(.+)$")


@dataclass(frozen=True)
class Caller:
    arn: str
    is_admin: bool = False

    @property
    def role_name(self) -> str | None:
        match = _ASSUMED_ROLE.match(self.arn)
        return match.group(2) if match else None

    @property
    def session_name(self) -> str | None:
        match = _ASSUMED_ROLE.match(self.arn)
        return match.group(3) if match else None

    def may_access(self, owner: str) -> bool:
        return self.is_admin or owner == self.arn


def is_admin(arn: str, patterns: tuple[str, ...]) -> bool:
    """An entry with a ':' is an ARN pattern (fnmatch); otherwise it is a role-name pattern that matches
    any session of an assumed role with that name (`AnnexAdmin`, `PoolAdmin*`)."""
    match = _ASSUMED_ROLE.match(arn)
    role = match.group(2) if match else None
    for pattern in patterns:
        if ":" in pattern:
            if fnmatchcase(arn, pattern):
                return True
        elif role is not None and fnmatchcase(role, pattern):
            return True
    return False


def caller_from_arn(arn: str | None, admin_patterns: tuple[str, ...]) -> Caller:
    if not arn or not arn.startswith("arn:"):
        raise Forbidden("the request was not signed by an IAM identity")
    return Caller(arn=arn, is_admin=is_admin(arn, admin_patterns))


def authorize_instance_report(arn: str | None, *, role_name: str, instance_id: str) -> None:
    """Only an instance may report for itself: the caller must be a session of the annex instance role
    (EC2 names instance-profile sessions with the instance id) whose session name is `instance_id`."""
    match = _ASSUMED_ROLE.match(arn or "")
    if match is None or match.group(2) != role_name:
        raise Forbidden("only an annex instance, signing with its instance role, may report a heartbeat")
    if match.group(3) != instance_id:
        raise Forbidden(f"instance {match.group(3)} may not report a heartbeat for {instance_id}")
