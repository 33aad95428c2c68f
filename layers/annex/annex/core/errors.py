"""Domain exceptions. AWS error codes become these (raised `from` the ClientError) in the service modules;
the request function maps them to HTTP in one exception handler."""

from __future__ import annotations


class AnnexError(Exception):
    """Base of every expected failure. `code` is stable and appears in API error bodies."""

    code = "AnnexError"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class AnnexNotFound(AnnexError):
    code = "AnnexNotFound"


class NameInUse(AnnexError):
    code = "NameInUse"


class QuotaExceeded(AnnexError):
    code = "QuotaExceeded"


class LeaseConflict(AnnexError):
    """The annex is not in a state that allows the operation (for example, extending an ended annex)."""

    code = "LeaseConflict"


class ConcurrentUpdate(AnnexError):
    """Another writer changed the record first; the caller may retry."""

    code = "ConcurrentUpdate"


class TokenReused(AnnexError):
    code = "ClientTokenReused"


class PolicyViolation(AnnexError):
    """The request is well formed but outside what the administrator allows."""

    code = "PolicyViolation"


class Forbidden(AnnexError):
    code = "Forbidden"


class CapacityUnavailable(AnnexError):
    """EC2 has no capacity (or no quota) for this request here; another subnet, type or a smaller
    request may still succeed. `ec2_code` is EC2's error code, such as InsufficientInstanceCapacity."""

    code = "CapacityUnavailable"

    def __init__(self, message: str, *, field: str | None = None, ec2_code: str = "") -> None:
        super().__init__(message, field=field)
        self.ec2_code = ec2_code


class LaunchRejected(AnnexError):
    """EC2 refused a launch for a reason capacity does not explain (image, security group, subnet,
    permissions): the administrator must act. `ec2_code` is EC2's error code."""

    code = "LaunchRejected"

    def __init__(self, message: str, *, field: str | None = None, ec2_code: str = "") -> None:
        super().__init__(message, field=field)
        self.ec2_code = ec2_code


class Throttled(AnnexError):
    code = "Throttled"


class LeaseNotDue(LeaseConflict):
    """The lease-check found an annex in the due index whose lease was extended since (index lag)."""

    code = "LeaseNotDue"
