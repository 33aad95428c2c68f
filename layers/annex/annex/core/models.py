"""Records and API shapes. The same models produce the OpenAPI document."""

import re
import unicodedata
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from annex.core.clock import parse_duration, parse_time, to_iso
from annex.money.units import BudgetIn

ANNEX_ID_PATTERN = r"^ax-[0-9a-f]{16}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
INSTANCE_ID_PATTERN = r"^i-[0-9a-f]{8,17}$"
TOKEN_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
# EC2 tag rules (the set every AWS service accepts): keys 1-128 and values 0-256 Unicode characters of
# letters, digits, spaces and + - = . _ : / @; neither may start with aws: (any case). Values may also hold
# commas (EC2 allows them; the local stack's annex-sim tag lists behaviours). Our own reservations on
# keys: annex: (the stack's own tags: the fail-safe, IAM conditions and inventory key on them) and Name
# (what the console and every tool shows as the instance's name), in any case.
TAG_SYMBOLS = frozenset(" _.:/=+-@")
TAG_VALUE_SYMBOLS = TAG_SYMBOLS | {","}
MAX_TAG_KEY, MAX_TAG_VALUE = 128, 256
AWS_TAG_PREFIX = "aws:"
# An HTCondor user as a job's Owner names it: the Unix login on the access point (not an e-mail).
CONDOR_USER_PATTERN = r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$"
MAX_SHARE_WITH = 20
RESERVED_TAG_PREFIXES = ("aws:", "annex:")
RESERVED_TAG_KEYS = frozenset({"name"})
MAX_USER_TAGS = 20
MAX_DURATION_TEXT = 64


class Market(StrEnum):
    ON_DEMAND = "on-demand"
    SPOT = "spot"


class AnnexState(StrEnum):
    REQUESTED = "requested"  # record written; launch pending
    LAUNCHING = "launching"  # the launch function holds it
    RUNNING = "running"  # instances launched (possibly fewer than requested; see launch_note)
    ENDED = "ended"  # stopped, expired or emptied; instances terminated
    FAILED = "failed"  # no capacity could be had; nothing left running


LIVE_STATES = frozenset({AnnexState.REQUESTED, AnnexState.LAUNCHING, AnnexState.RUNNING})


class EndReason(StrEnum):
    STOPPED = "stopped"
    LEASE_EXPIRED = "lease-expired"
    LAUNCH_FAILED = "launch-failed"
    IDLE = "idle"
    SILENT = "silent"
    ORPHAN = "orphan"
    ALL_INSTANCES_GONE = "all-instances-gone"
    BUDGET_REACHED = "budget-reached"
    BOOT_PROBLEM = "boot-problem"
    SPOT_INTERRUPTED = "spot-interrupted"


class SpotNotice(StrEnum):
    INTERRUPTION = "interruption"
    REBALANCE = "rebalance"


class InstanceState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


LIVE_INSTANCE_STATES = frozenset({InstanceState.PENDING, InstanceState.RUNNING})

# --- reusable field types -------------------------------------------------------------------------

Time = Annotated[
    datetime,
    BeforeValidator(parse_time),
    PlainSerializer(to_iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-22T18:00:00Z"]}),
]


def _duration_text(value: object) -> timedelta:
    """A duration is a string (JSON numbers are refused: the schema says string)."""
    if not isinstance(value, str):
        raise ValueError('give the duration as a string such as "4h" or "600" (seconds), not a JSON number')
    if len(value) > MAX_DURATION_TEXT or not value.isascii():
        raise ValueError("not a duration; use forms like 90m, 4h, 1d or 1h30m")
    return parse_duration(value)


def _time_text(value: object) -> datetime:
    if not isinstance(value, str) or len(value) > MAX_DURATION_TEXT or not value.isascii():
        raise ValueError("expected an ISO 8601 time such as 2026-11-22T18:00:00Z")
    try:
        return parse_time(value)
    except OverflowError:  # a time whose UTC equivalent is outside years 1-9999
        raise ValueError(f"'{value}' is out of range") from None


DurationIn = Annotated[
    timedelta,
    BeforeValidator(_duration_text),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": MAX_DURATION_TEXT,
            "description": "A duration, as a string: 90m, 4h, 1d, 1h30m, ISO 8601 (PT4H), or a whole number "
            'of seconds ("600"). A JSON number is refused.',
            "examples": ["4h"],
        }
    ),
]
TimeIn = Annotated[
    datetime,
    BeforeValidator(_time_text),
    PlainSerializer(to_iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-22T18:00:00Z"]}),
]
AnnexId = Annotated[str, Field(pattern=ANNEX_ID_PATTERN, examples=["ax-0123456789abcdef"])]
AnnexName = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="1-63 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        examples=["bio-run-7"],
    ),
]


def _tag_characters_ok(text: str, symbols: frozenset[str]) -> bool:
    return all(c in symbols or unicodedata.category(c)[0] in "LN" for c in text)


def _check_tags(tags: dict[str, str]) -> dict[str, str]:
    if len(tags) > MAX_USER_TAGS:
        raise ValueError(f"at most {MAX_USER_TAGS} tags are allowed")
    for key, value in tags.items():
        shown = repr(key[:40])
        if not 1 <= len(key) <= MAX_TAG_KEY or not _tag_characters_ok(key, TAG_SYMBOLS):
            raise ValueError(
                f"tag key {shown} must be 1-{MAX_TAG_KEY} letters, digits, spaces or + - = . _ : / @"
            )
        if key.lower().startswith(RESERVED_TAG_PREFIXES) or key.lower() in RESERVED_TAG_KEYS:
            raise ValueError(f"tag key {shown} is reserved (aws:, annex: and Name are set by the stack)")
        if len(value) > MAX_TAG_VALUE or not _tag_characters_ok(value, TAG_VALUE_SYMBOLS):
            raise ValueError(
                f"the value of tag {shown} must be at most {MAX_TAG_VALUE} letters, digits, spaces "
                "or + - = . _ : / @ ,"
            )
        if value.lower().startswith(AWS_TAG_PREFIX):
            raise ValueError(f"the value of tag {shown} must not start with aws: (reserved by AWS)")
    return tags


def _printable(text: str | None) -> str | None:
    if text is not None and not text.isprintable():
        raise ValueError("must be printable text (no control or format characters)")
    return text


UserTags = Annotated[dict[str, str], AfterValidator(_check_tags)]
CondorUser = Annotated[
    str,
    Field(
        pattern=CONDOR_USER_PATTERN,
        description="An HTCondor user (a job's Owner): the Unix login on the access point, 1-32 characters.",
        examples=["alice"],
    ),
]


def _distinct(users: list[str]) -> list[str]:
    if len(set(users)) != len(users):
        raise ValueError("lists a user twice")
    return users


ShareWith = Annotated[list[CondorUser], Field(max_length=MAX_SHARE_WITH), AfterValidator(_distinct)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


# --- API inputs -----------------------------------------------------------------------------------


def _not_an_id(name: str) -> str:
    if re.match(ANNEX_ID_PATTERN, name):
        raise ValueError("looks like an annex id (ax- and 16 hex digits); choose a name that does not")
    return name


class CreateAnnexRequest(_Strict):
    """Body of POST /annexes. Omitted fields take the administrator's defaults."""

    name: Annotated[AnnexName, AfterValidator(_not_an_id)]
    count: int = Field(ge=1, strict=True, description="How many instances to launch (a JSON integer).")
    instance_type: str | None = Field(
        default=None, min_length=1, max_length=64, description="An EC2 instance type the pool allows."
    )
    market: Market = Market.ON_DEMAND
    lease: DurationIn | None = Field(default=None, description="How long the annex may run.")
    idle_timeout: DurationIn | None = Field(
        default=None, description="An instance with no claimed slot for this long is terminated."
    )
    tags: UserTags = Field(default_factory=dict)
    condor_user: CondorUser | None = Field(
        default=None,
        description="The HTCondor user whose jobs run on the annex (annex-client sends the local login). "
        "Omitted: the administrator's mapping, or the caller's IAM user name when it is a login name.",
    )
    share_with: ShareWith = Field(
        default_factory=list, description="Other HTCondor users whose jobs sent to this annex may run on it."
    )
    all_my_jobs: bool = Field(
        default=False,
        description="Run every idle job of condor_user, not only the jobs sent to this annex (+AnnexTarget).",
    )
    client_token: str | None = Field(
        default=None,
        pattern=TOKEN_PATTERN,
        description="Retrying with the same token returns the same annex instead of creating another.",
    )
    budget: BudgetIn | None = Field(
        default=None, description="USD: the annex ends (budget-reached) before its cost passes this."
    )
    replace: bool = Field(
        default=False,
        description="Spot only: replace each instance EC2 interrupts, once, while the lease and budget last.",
    )

    @field_validator("replace")
    @classmethod
    def _replace_needs_spot(cls, replace: bool, info: ValidationInfo) -> bool:
        if replace and info.data.get("market") is not Market.SPOT:
            raise ValueError("applies to spot annexes only (market spot): on-demand is not interrupted")
        return replace


class LeaseMove(_Strict):
    """Exactly one of `by` or `until`: how far an extension moves the lease."""

    by: DurationIn | None = Field(default=None, description="Add this to the current lease expiry.")
    until: TimeIn | None = Field(default=None, description="Move the lease expiry to this time.")

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if isinstance(data, dict) and (data.get("by") is None) == (data.get("until") is None):
            raise ValueError("give exactly one of 'by' (a duration) or 'until' (a time)")
        return data


class ExtendRequest(LeaseMove):
    """Body of POST /annexes/{id}/extend: exactly one of `by` or `until`, and a client token."""

    client_token: str | None = Field(
        default=None,
        pattern=TOKEN_PATTERN,
        description="Retrying with the same token answers the first extension instead of extending again.",
    )


class ShortenRequest(_Strict):
    """Body of POST /annexes/{id}/shorten: exactly one of `to` or `until`. The lease only gets shorter."""

    to: DurationIn | None = Field(default=None, description="The lease ends this long from now.")
    until: TimeIn | None = Field(default=None, description="The lease ends at this time.")

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if isinstance(data, dict) and (data.get("to") is None) == (data.get("until") is None):
            raise ValueError("give exactly one of 'to' (a duration from now) or 'until' (a time)")
        return data


class IdleTimeoutRequest(_Strict):
    """Body of POST /annexes/{id}/idle-timeout: the running instances learn it at their next heartbeat."""

    idle_timeout: DurationIn = Field(description="An instance with no claimed slot for this long is ended.")


class StopRequest(_Strict):
    """Body of POST /annexes/{id}/stop (optional)."""

    reason: Annotated[str | None, AfterValidator(_printable)] = Field(default=None, max_length=200)


# --- records --------------------------------------------------------------------------------------


class Annex(BaseModel):
    """An annex as stored and as returned by the API."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    id: AnnexId
    name: AnnexName
    owner: str = Field(description="The IAM ARN of the caller that requested the annex.")
    condor_user: CondorUser | None = Field(
        default=None, description="The HTCondor user (job Owner) whose jobs run on the annex."
    )
    share_with: list[CondorUser] = Field(default_factory=list)
    all_my_jobs: bool = False
    state: AnnexState
    count: int
    instance_types: list[str]
    market: Market
    lease_expires_at: Time
    idle_timeout_seconds: int
    created_at: Time
    updated_at: Time
    client_token: str | None = None
    version: int = 1
    tags: dict[str, str] = Field(default_factory=dict)
    launched_count: int = 0
    launch_note: str | None = None
    end_reason: EndReason | None = None
    ended_at: Time | None = None
    budget_usd: BudgetIn | None = None
    replace: bool = Field(
        default=False,
        description="Each spot instance EC2 interrupts is replaced once (lease and budget allowing).",
    )
    interrupted_count: int = Field(
        default=0, description="Spot instances EC2 sent an interruption warning for."
    )
    replaced_count: int = Field(
        default=0, description="Interrupted instances a replacement was launched for."
    )

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def idle_timeout(self) -> timedelta:
        return timedelta(seconds=self.idle_timeout_seconds)

    def drain_time(self, drain_lead: timedelta) -> datetime | None:
        """When the annex stops taking new jobs (the last `drain_lead` of its lease); None once it ended."""
        return self.lease_expires_at - drain_lead if self.live else None


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    instance_id: str = Field(pattern=INSTANCE_ID_PATTERN)
    annex_id: AnnexId
    instance_type: str
    zone: str | None = None
    market: Market
    state: InstanceState
    launched_at: Time
    last_heartbeat_at: Time | None = None
    claimed_slots: int | None = None
    total_slots: int | None = None
    idle_since: Time | None = None
    end_reason: EndReason | None = None
    ended_at: Time | None = None
    # A spot interruption warning or rebalance recommendation EC2 sent for it (the next heartbeat drains).
    spot_notice: SpotNotice | None = None
    spot_notice_at: Time | None = None
    # Replacement of an interrupted instance (annexes requested with `replace`): the claim (a quota unit
    # taken for it), then either the replacement's id or why there is none. `replaces` is on the new one.
    replacement_claimed_at: Time | None = None
    replaced_by: str | None = Field(default=None, pattern=INSTANCE_ID_PATTERN)
    replacement_note: str | None = None
    replaces: str | None = Field(default=None, pattern=INSTANCE_ID_PATTERN)
    problem: str | None = Field(
        default=None, description="The boot problem the instance reported before powering off, if any."
    )


class HistoryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    at: Time
    actor: str
    action: str
    detail: str = ""


class Draining(BaseModel):
    """The drain time the API adds to an annex it answers with (`Annex.drain_time`)."""

    model_config = ConfigDict(defer_build=True)

    drains_at: Time | None = Field(
        default=None,
        description="When a live annex stops starting new jobs (lease end minus DrainBeforeLeaseEnd); "
        "null once it has ended.",
    )


class AnnexDetail(Annex):
    instances: list[Instance] = Field(default_factory=list)
    history: list[HistoryEvent] = Field(
        default_factory=list, description="Newest first, one page (?history_limit=, 50 unless given)."
    )
    history_next_token: str | None = Field(
        default=None, description="Pass as ?history_next_token= for the next (older) page of history."
    )


class AnnexList(BaseModel):
    model_config = ConfigDict(defer_build=True)
    annexes: list[Annex]
    next_token: str | None = Field(default=None, description="Pass as ?next_token= for the next page.")


class ExtendResult(BaseModel):
    model_config = ConfigDict(defer_build=True)
    annex: Annex
    capped: bool = Field(description="True when the request was cut to the administrator's maximum lease.")
    message: str


class SweepStatus(BaseModel):
    model_config = ConfigDict(defer_build=True)
    name: str
    last_success_at: Time | None = None


class Limits(BaseModel):
    model_config = ConfigDict(defer_build=True)
    allowed_instance_types: list[str]
    default_instance_type: str
    max_instances_per_annex: int
    max_live_instances_per_owner: int
    max_lease_seconds: int
    default_lease_seconds: int
    min_lease_seconds: int
    default_idle_timeout_seconds: int
    min_idle_timeout_seconds: int


class Health(BaseModel):
    model_config = ConfigDict(defer_build=True)
    status: Literal["ok"] = "ok"
    caller: str
    is_admin: bool
    limits: Limits
    sweeps: list[SweepStatus]


class ErrorField(BaseModel):
    model_config = ConfigDict(defer_build=True)
    field: str
    reason: str


class ErrorBody(BaseModel):
    model_config = ConfigDict(defer_build=True)
    error: str = Field(description="A stable code, such as ValidationError or NameInUse.")
    message: str
    fields: list[ErrorField] = Field(default_factory=list)


# --- heartbeat (the on-instance agent <-> the heartbeat route) -------------------------------------


class HeartbeatAction(StrEnum):
    RUN = "run"  # keep going
    DRAIN = "drain"  # finish running jobs, accept no new ones (condor_drain -graceful)
    TERMINATE = "terminate"  # power off now


HEARTBEAT_PROBLEM_MAX = 300


class HeartbeatRequest(_Strict):
    """Body of POST /heartbeat, sent every minute by the agent on each instance."""

    instance_id: str = Field(pattern=INSTANCE_ID_PATTERN)
    annex_id: AnnexId
    claimed_slots: int = Field(ge=0, le=4096, strict=True)
    total_slots: int = Field(ge=0, le=4096, strict=True)
    problem: str | None = Field(
        default=None,
        min_length=1,
        max_length=HEARTBEAT_PROBLEM_MAX,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        strict=True,
        description="A boot problem the instance reports before powering off: one line, for the owner.",
    )
    spot_notice: Literal["interruption", "rebalance"] | None = Field(
        default=None,
        description="A spot interruption notice (its jobs are being vacated) or a rebalance recommendation.",
    )

    @model_validator(mode="after")
    def _claimed_within_total(self) -> Self:
        if self.claimed_slots > self.total_slots:
            raise ValueError("claimed_slots must not exceed total_slots")
        return self


class HeartbeatResponse(BaseModel):
    model_config = ConfigDict(defer_build=True)
    action: HeartbeatAction
    lease_expires_at: Time | None = Field(
        default=None, description="The lease expiry the instance must enforce itself (dead-man switch)."
    )
    reason: str = ""
