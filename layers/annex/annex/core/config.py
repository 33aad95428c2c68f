"""Settings models, one per function, validated once at cold start from the environment.

The template sets every variable; there are no silent defaults here. A missing or malformed variable
fails the cold start with a message naming it.
"""

import os
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from annex.core.auth import IDENTITY_CENTER_ROLES, IdentityPolicy
from annex.core.clock import parse_duration
from annex.money.units import parse_budget


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _optional_budget(value: object) -> Decimal | None:
    """A template parameter: "0" or "" means none."""
    if value in ("", "0", 0, None):
        return None
    return parse_budget(value)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
CsvList = Annotated[tuple[str, ...], BeforeValidator(_split_csv)]
# An IAM role name with fnmatch wildcards; never an ARN (a role's sessions are what the lists describe).
_ROLE_PATTERN = re.compile(r"^[\w+=,.@*?\[\]-]{1,64}$")


def _role_patterns(variable: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    def check(value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if not _ROLE_PATTERN.match(p) or p.strip("*?") == ""]
        if bad:
            raise ValueError(
                f"{variable} takes role-name patterns such as Researcher or HeadNode*, not {', '.join(bad)}"
            )
        sso = [p for p in value if p.startswith(IDENTITY_CENTER_ROLES.rstrip("*"))]
        if sso:
            raise ValueError(
                f"{variable} must not list IAM Identity Center roles ({', '.join(sso)}): "
                "annex recognises them by itself"
            )
        return value

    return check


class _EnvModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, defer_build=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        return cls.model_validate(dict(os.environ if environ is None else environ))


_CONDOR_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$")


def _condor_user_map(value: tuple[str, ...]) -> tuple[str, ...]:
    for entry in value:
        pattern, _, user = entry.rpartition("=")
        if not pattern or not _CONDOR_USER.match(user):
            raise ValueError(f"CONDOR_USER_MAP entries are ARN-pattern=htcondor-user, not '{entry[:80]}'")
    return value


class CommonSettings(_EnvModel):
    table_name: str = Field(alias="TABLE_NAME", min_length=3)
    stack_name: str = Field(alias="STACK_NAME", min_length=1)
    retention: Annotated[timedelta, BeforeValidator(lambda v: timedelta(days=int(v)))] = Field(
        alias="RETENTION_DAYS"
    )


class Ec2Scope(_EnvModel):
    """Whose instances a function may see and end: those launched with the stack's instance profile."""

    instance_profile_arn: str = Field(
        alias="INSTANCE_PROFILE_ARN", pattern=r"^arn:aws[a-z-]*:iam::\d{12}:instance-profile/[\w+=,.@/-]+$"
    )


class SweepScale(Ec2Scope):
    """How a sweep spreads its work: `sweep_workers` threads for the per-annex/per-instance store
    transactions (1: one at a time); the orphan sweep examines one of `orphan_segments` parts of the fleet
    per run, so every instance is examined within that many runs."""

    sweep_workers: int = Field(alias="SWEEP_WORKERS", ge=1, le=32)
    orphan_segments: int = Field(default=1, alias="ORPHAN_SEGMENTS", ge=1, le=256)


class Policy(_EnvModel):
    """The administrator's limits and defaults (template parameters)."""

    allowed_instance_types: CsvList = Field(alias="ALLOWED_INSTANCE_TYPES", min_length=1)
    default_instance_type: str = Field(alias="DEFAULT_INSTANCE_TYPE")
    max_instances_per_annex: int = Field(alias="MAX_INSTANCES_PER_ANNEX", ge=1, le=10_000)
    max_live_instances_per_owner: int = Field(alias="MAX_LIVE_INSTANCES_PER_OWNER", ge=1)
    max_lease: Duration = Field(alias="MAX_LEASE")
    default_lease: Duration = Field(alias="DEFAULT_LEASE")
    min_lease: Duration = Field(alias="MIN_LEASE")
    default_idle_timeout: Duration = Field(alias="DEFAULT_IDLE_TIMEOUT")
    min_idle_timeout: Duration = Field(alias="MIN_IDLE_TIMEOUT")
    # The least an extend or a shorten must move the lease: each move is a history event and two EC2
    # calls (find the instances, move their lease tag), so one-second moves cannot be repeated cheaply.
    min_extension: Duration = Field(alias="MIN_EXTENSION")
    max_live_instances: int = Field(alias="MAX_LIVE_INSTANCES", ge=1)
    admin_principals: CsvList = Field(alias="ADMIN_PRINCIPALS", default=())
    # "ARN-pattern=htcondor-user" entries: the administrator's word on whose jobs an owner's annexes run.
    condor_user_map: Annotated[CsvList, AfterValidator(_condor_user_map)] = Field(
        alias="CONDOR_USER_MAP", default=()
    )
    session_bound_roles: Annotated[CsvList, AfterValidator(_role_patterns("SESSION_BOUND_ROLES"))] = Field(
        alias="SESSION_BOUND_ROLES", default=()
    )
    shared_instance_roles: Annotated[CsvList, AfterValidator(_role_patterns("SHARED_INSTANCE_ROLES"))] = (
        Field(alias="SHARED_INSTANCE_ROLES", default=())
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.default_instance_type not in self.allowed_instance_types:
            raise ValueError("DEFAULT_INSTANCE_TYPE must be one of ALLOWED_INSTANCE_TYPES")
        if not self.min_lease <= self.default_lease <= self.max_lease:
            raise ValueError("MIN_LEASE <= DEFAULT_LEASE <= MAX_LEASE must hold")
        if not timedelta(minutes=1) <= self.min_extension <= self.max_lease:
            raise ValueError("MIN_EXTENSION must be at least 1m and at most MAX_LEASE")
        if self.default_idle_timeout < self.min_idle_timeout:
            raise ValueError("DEFAULT_IDLE_TIMEOUT must be at least MIN_IDLE_TIMEOUT")
        if self.max_instances_per_annex > self.max_live_instances_per_owner:
            raise ValueError("MAX_INSTANCES_PER_ANNEX must not exceed MAX_LIVE_INSTANCES_PER_OWNER")
        if self.max_live_instances_per_owner > self.max_live_instances:
            raise ValueError("MAX_LIVE_INSTANCES_PER_OWNER must not exceed MAX_LIVE_INSTANCES")
        both = set(self.session_bound_roles) & set(self.shared_instance_roles)
        if both:
            raise ValueError(
                f"{', '.join(sorted(both))} is in both SESSION_BOUND_ROLES and SHARED_INSTANCE_ROLES: "
                "a role's sessions are either one person each or one shared owner"
            )
        return self

    @property
    def identity(self) -> IdentityPolicy:
        return IdentityPolicy(
            admin_principals=self.admin_principals,
            session_bound_roles=self.session_bound_roles,
            shared_instance_roles=self.shared_instance_roles,
        )


class MoneySettings(_EnvModel):
    """Prices, budgets and notices (template parameters)."""

    region: str = Field(alias="REGION", min_length=1)
    max_annex_budget: Annotated[Decimal, BeforeValidator(parse_budget)] = Field(alias="MAX_ANNEX_BUDGET")
    default_monthly_budget: Annotated[Decimal | None, BeforeValidator(_optional_budget)] = Field(
        alias="DEFAULT_MONTHLY_BUDGET"
    )
    notice_lead: Duration = Field(alias="NOTICE_BEFORE_LEASE_END")
    event_bus_name: str = Field(alias="EVENT_BUS_NAME", min_length=1, max_length=256)


class RequestSettings(CommonSettings, Policy, MoneySettings, Ec2Scope):
    """The request (API) function."""

    notice_topic_arn: str = Field(
        alias="NOTICE_TOPIC_ARN", pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]+$"
    )
    drain_lead: Duration = Field(alias="DRAIN_LEAD")
    # Create, extend and shorten arm a lease timer themselves when the new expiry is near (empty: they
    # leave it to the lease-check's minute).
    lease_timer_queue_url: str = Field(alias="LEASE_TIMER_QUEUE_URL", max_length=1024)


class ReapTiming(_EnvModel):
    """When an instance counts as silent. Launch writes `reap_at = launched_at + boot_grace`; each
    heartbeat moves it to the earlier of the idle deadline and `now + heartbeat_loss_grace`."""

    boot_grace: Duration = Field(alias="BOOT_GRACE")
    heartbeat_loss_grace: Duration = Field(alias="HEARTBEAT_LOSS_GRACE")


_SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}$")
# The template parameters an administrator must set before the first launch. They may be empty at
# deploy time (the stack deploys without them); a launch then ends the annex FAILED naming them.
LAUNCH_PARAMETERS = {
    "SubnetIds": "subnet_ids",
    "PoolSecurityGroupId": "security_group_id",
    "AnnexImageId": "image_id",
    "CentralManager": "central_manager",
}


def _subnet_ids(value: tuple[str, ...]) -> tuple[str, ...]:
    bad = [s for s in value if not _SUBNET_ID.match(s)]
    if bad:
        raise ValueError(f"SUBNET_IDS must be subnet ids (subnet-0123abcd...), not {', '.join(bad)}")
    if len(set(value)) != len(value):
        raise ValueError("SUBNET_IDS lists a subnet twice")
    return value


class LaunchSettings(CommonSettings, ReapTiming):
    """The launch function: where and how annex instances start, and what their user data needs."""

    subnet_ids: Annotated[CsvList, AfterValidator(_subnet_ids)] = Field(alias="SUBNET_IDS")
    security_group_id: str = Field(alias="SECURITY_GROUP_ID", pattern=r"^(sg-[0-9a-f]{8,17})?$")
    image_id: str = Field(
        alias="IMAGE_ID", pattern=r"^(ami-[0-9a-f]{8,17}|resolve:ssm:/(annex|aws/service)/[A-Za-z0-9_./-]+)?$"
    )
    central_manager: str = Field(
        alias="CENTRAL_MANAGER", pattern=r"^([A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?)?$", max_length=253
    )
    pool_token_parameter: str = Field(alias="POOL_TOKEN_PARAMETER", pattern=r"^/[A-Za-z0-9_.\-/]{1,1010}$")
    ssm_endpoint: str = Field(alias="SSM_ENDPOINT", pattern=r"^https?://[A-Za-z0-9.:-]+/?$")
    instance_profile_arn: str = Field(
        alias="INSTANCE_PROFILE_ARN", pattern=r"^arn:aws[a-z-]*:iam::\d{12}:instance-profile/[\w+=,.@/-]+$"
    )
    heartbeat_url: str = Field(alias="HEARTBEAT_URL", pattern=r"^https?://[A-Za-z0-9.:-]+/[A-Za-z0-9._/-]*$")
    deadman_margin: Duration = Field(alias="DEADMAN_MARGIN")
    config_timeout: Duration = Field(alias="CONFIG_TIMEOUT")
    drain_lead: Duration = Field(alias="DRAIN_LEAD")
    use_ccb: bool = Field(alias="USE_CCB")
    # Replacing interrupted spot instances: the quota a replacement takes, and the prices its budget
    # check reads.
    region: str = Field(alias="REGION", min_length=1)
    max_live_instances_per_owner: int = Field(alias="MAX_LIVE_INSTANCES_PER_OWNER", ge=1)
    max_live_instances: int = Field(alias="MAX_LIVE_INSTANCES", ge=1)
    # ... and the owner's monthly budget a replacement must fit (an administrator's, else this default)
    default_monthly_budget: Annotated[Decimal | None, BeforeValidator(_optional_budget)] = Field(
        alias="DEFAULT_MONTHLY_BUDGET"
    )

    @model_validator(mode="after")
    def _config_before_reap(self) -> Self:
        if self.config_timeout >= self.boot_grace:
            raise ValueError(
                "CONFIG_TIMEOUT must be shorter than BOOT_GRACE: an instance that cannot configure itself "
                "powers off before the cloud would reap it as silent"
            )
        return self

    def missing(self) -> list[str]:
        """Template parameters still empty; launching needs every one of them."""
        return [param for param, attr in LAUNCH_PARAMETERS.items() if not getattr(self, attr)]


class HeartbeatSettings(CommonSettings, ReapTiming):
    """The heartbeat function (POST /heartbeat)."""

    instance_role_name: str = Field(alias="INSTANCE_ROLE_NAME", min_length=1, max_length=64)
    drain_lead: Duration = Field(alias="DRAIN_LEAD")


class LeaseCheckSettings(CommonSettings, MoneySettings, SweepScale):
    """The lease-check sweep (every minute): due leases and the orphan sweep; it arms the lease timers
    (empty: no timers, the minute sweep alone enforces leases)."""

    lease_timer_queue_url: str = Field(default="", alias="LEASE_TIMER_QUEUE_URL", max_length=1024)


class SilentBreaker(_EnvModel):
    """The circuit breaker on silent terminations: when one idle-reap run finds at least
    `silent_hold_min` instances silent and they are at least `silent_hold_share` of the stack's live
    instances, the fault is more likely ours (the heartbeat path) than theirs, so their terminations
    are held for up to `silent_hold` past their silence deadline. Their lease timers still stop them."""

    silent_hold_share: float = Field(alias="SILENT_HOLD_SHARE", default=0.5, gt=0, le=1)
    silent_hold_min: int = Field(alias="SILENT_HOLD_MIN_INSTANCES", default=5, ge=2)
    silent_hold: Duration = Field(alias="SILENT_HOLD", default=timedelta(minutes=15))


class IdleReapSettings(CommonSettings, ReapTiming, SilentBreaker, SweepScale):
    """The idle-reap sweep (every minute): idle and silent instances."""


class InterruptionSettings(CommonSettings):
    """The interruption function (EC2 spot events through a queue)."""


class PricesSettings(CommonSettings):
    """The prices function (every few hours): on-demand and spot prices for the allowed types."""

    region: str = Field(alias="REGION", min_length=1)
    allowed_instance_types: CsvList = Field(alias="ALLOWED_INSTANCE_TYPES", min_length=1)
    price_list_region: str = Field(
        alias="PRICE_LIST_REGION", pattern=r"^(us-east-1|ap-south-1|eu-central-1)$"
    )


class NoticesSettings(CommonSettings, MoneySettings):
    """The notices function (the annex table's stream): the "annex ended" notice."""
