"""The administrator's limits applied to a request. Pure functions: no I/O, time passed in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase

from annex.core.clock import format_duration, to_iso
from annex.core.config import Policy
from annex.core.errors import PolicyViolation
from annex.core.models import CONDOR_USER_PATTERN, CreateAnnexRequest, Market

_CONDOR_USER = re.compile(CONDOR_USER_PATTERN)


@dataclass(frozen=True)
class AnnexSpec:
    """A create request with the defaults filled in and the limits checked."""

    name: str
    count: int
    instance_types: tuple[str, ...]
    market: Market
    lease: timedelta
    idle_timeout: timedelta
    tags: dict[str, str]
    share_with: tuple[str, ...] = ()
    all_my_jobs: bool = False


def condor_user_from_arn(owner_arn: str) -> str | None:
    """The caller's IAM user or session name when it is a plausible login name (user/alice,
    assumed-role/Researchers/alice -> alice); None for e-mail session names (SSO) and anything else."""
    name = owner_arn.rsplit("/", 1)[-1] if "/" in owner_arn else ""
    return name if _CONDOR_USER.match(name) else None


def resolve_condor_user(owner_arn: str, requested: str | None, policy: Policy) -> str:
    """The HTCondor user whose jobs the annex runs: the administrator's mapping wins (a request may
    repeat it, not change it); else the request's condor_user; else the IAM name when it is a login."""
    for entry in policy.condor_user_map:
        pattern, _, mapped = entry.rpartition("=")
        if fnmatchcase(owner_arn, pattern):
            if requested is not None and requested != mapped:
                raise PolicyViolation(
                    f"the pool administrator maps you to the HTCondor user '{mapped}'; "
                    f"omit condor_user or give '{mapped}'",
                    field="condor_user",
                )
            return mapped
    user = requested or condor_user_from_arn(owner_arn)
    if user is None:
        raise PolicyViolation(
            "say which HTCondor user's jobs this annex runs: your login name on the access point "
            "(annex-client sends it; --condor-user to change it)",
            field="condor_user",
        )
    return user


def resolve_owner(spec: AnnexSpec, owner_arn: str, requested: str | None, policy: Policy) -> str:
    """resolve_condor_user, and the users the annex is shared with must be others."""
    user = resolve_condor_user(owner_arn, requested, policy)
    if user in spec.share_with:
        raise PolicyViolation(f"share_with lists the annex's own HTCondor user '{user}'", field="share_with")
    return user


def resolve_create(request: CreateAnnexRequest, policy: Policy) -> AnnexSpec:
    instance_type = request.instance_type or policy.default_instance_type
    if instance_type not in policy.allowed_instance_types:
        raise PolicyViolation(
            f"instance type '{instance_type}' is not allowed here; "
            f"choose one of: {', '.join(policy.allowed_instance_types)}",
            field="instance_type",
        )
    if request.count > policy.max_instances_per_annex:
        raise PolicyViolation(
            f"at most {policy.max_instances_per_annex} instances per annex; ask for fewer "
            "or split the work across annexes",
            field="count",
        )
    lease = request.lease or policy.default_lease
    if lease < policy.min_lease:
        raise PolicyViolation(
            f"the lease must be at least {format_duration(policy.min_lease)}", field="lease"
        )
    if lease > policy.max_lease:
        raise PolicyViolation(
            f"the lease may be at most {format_duration(policy.max_lease)}; "
            "request less and extend it later with 'annex-client extend'",
            field="lease",
        )
    idle = request.idle_timeout or policy.default_idle_timeout
    if idle < policy.min_idle_timeout:
        raise PolicyViolation(
            f"the idle timeout must be at least {format_duration(policy.min_idle_timeout)}",
            field="idle_timeout",
        )
    if idle > lease:
        raise PolicyViolation("the idle timeout must not be longer than the lease", field="idle_timeout")
    # Spot may use every allowed type (capacity-optimized allocation); the chosen type goes first.
    types: tuple[str, ...] = (instance_type,)
    if request.market is Market.SPOT and request.instance_type is None:
        types = (instance_type, *(t for t in policy.allowed_instance_types if t != instance_type))
    return AnnexSpec(
        name=request.name,
        count=request.count,
        instance_types=types,
        market=request.market,
        lease=lease,
        idle_timeout=idle,
        tags=dict(request.tags),
        share_with=tuple(request.share_with),
        all_my_jobs=request.all_my_jobs,
    )


@dataclass(frozen=True)
class Extension:
    new_expiry: datetime
    capped: bool
    message: str


def resolve_extension(
    current_expiry: datetime,
    *,
    by: timedelta | None,
    until: datetime | None,
    now: datetime,
    policy: Policy,
) -> Extension:
    """Extend from the current expiry (not from now). The remaining lease never exceeds MAX_LEASE:
    a longer request is cut to that cap and says so."""
    if by is not None:
        wanted = current_expiry + by
    elif until is not None:
        wanted = until
    else:  # the request model guarantees one of them
        raise PolicyViolation("give 'by' or 'until'", field="by")
    if wanted <= current_expiry:
        raise PolicyViolation(
            f"the new expiry {to_iso(wanted)} is not later than the current one {to_iso(current_expiry)}",
            field="until" if until is not None else "by",
        )
    if wanted <= now:
        raise PolicyViolation(
            f"the new expiry {to_iso(wanted)} is already in the past; extend by more",
            field="until" if until is not None else "by",
        )
    cap = now + policy.max_lease
    if cap <= current_expiry:
        raise PolicyViolation(
            f"the lease already reaches the maximum of {format_duration(policy.max_lease)} ahead; "
            "extend again later",
            field="until" if until is not None else "by",
        )
    field = "until" if until is not None else "by"
    step = policy.min_extension
    if wanted > cap:
        if cap - current_expiry < step:
            raise PolicyViolation(
                f"the lease already reaches within {format_duration(step)} (MinExtension, the smallest "
                f"move) of the maximum of {format_duration(policy.max_lease)} ahead; extend again later",
                field=field,
            )
        return Extension(
            new_expiry=cap,
            capped=True,
            message=f"capped at {to_iso(cap)}: a lease may reach at most "
            f"{format_duration(policy.max_lease)} ahead; extend again later",
        )
    if wanted - current_expiry < step:
        raise PolicyViolation(
            f"an extension must move the lease by at least {format_duration(step)} (MinExtension); "
            f"this one moves it by {format_duration(wanted - current_expiry)}",
            field=field,
        )
    return Extension(new_expiry=wanted, capped=False, message=f"lease now ends at {to_iso(wanted)}")


def resolve_shortening(
    current_expiry: datetime,
    *,
    to: timedelta | None,
    until: datetime | None,
    now: datetime,
    policy: Policy,
) -> datetime:
    """The new, earlier lease expiry. It must be before the current one and leave at least MIN_LEASE
    from now (to end an annex now, stop it)."""
    field = "until" if until is not None else "to"
    if until is not None:
        wanted = until
    elif to is not None:
        wanted = now + to
    else:  # the request model guarantees one of them
        raise PolicyViolation("give 'to' or 'until'", field="to")
    if wanted >= current_expiry:
        raise PolicyViolation(
            f"the new expiry {to_iso(wanted)} is not earlier than the current one {to_iso(current_expiry)}; "
            "use extend to lengthen a lease",
            field=field,
        )
    if current_expiry - wanted < policy.min_extension:
        raise PolicyViolation(
            f"a shortening must move the lease by at least {format_duration(policy.min_extension)} "
            f"(MinExtension); this one moves it by {format_duration(current_expiry - wanted)}",
            field=field,
        )
    floor = now + policy.min_lease
    if wanted < floor:
        raise PolicyViolation(
            f"the lease must run at least {format_duration(policy.min_lease)} more (until {to_iso(floor)} "
            "or later); to end the annex now, stop it",
            field=field,
        )
    return wanted


def resolve_idle_timeout(idle: timedelta, policy: Policy) -> timedelta:
    """A new idle timeout for a live annex: within the same limits as at request time."""
    if idle < policy.min_idle_timeout:
        raise PolicyViolation(
            f"the idle timeout must be at least {format_duration(policy.min_idle_timeout)}",
            field="idle_timeout",
        )
    if idle > policy.max_lease:
        raise PolicyViolation(
            "the idle timeout must not be longer than the maximum lease of "
            f"{format_duration(policy.max_lease)}",
            field="idle_timeout",
        )
    return idle
