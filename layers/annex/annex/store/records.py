"""The typed records the store returns. Storage-only fields (keys, `held`, `due_at`, the raw heartbeat
time used as a concurrency token) appear here only as typed values with a meaning."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from annex.core.models import Annex, Instance


@dataclass(frozen=True)
class HeartbeatVersion:
    """Which heartbeat an instance record was read at: an opaque token for optimistic concurrency.
    A write made "unless a heartbeat landed since" carries the version it was decided from."""

    _stamp: str | None = field(default=None, repr=False)

    @property
    def never_heard(self) -> bool:
        return self._stamp is None


@dataclass(frozen=True)
class InstanceKey:
    annex_id: str
    instance_id: str


@dataclass(frozen=True)
class AnnexRecord:
    """An annex as stored, with the quota units it holds (its live instances, or its count before
    launch finished); zero once it has ended."""

    annex: Annex
    held: int

    @property
    def id(self) -> str:
        return self.annex.id


@dataclass(frozen=True)
class InstanceRecord:
    """An instance as stored: `due_at` is when idle-reap must look at it (None once recorded
    terminated), `heartbeat` the version writes conditional on "no heartbeat since" carry."""

    instance: Instance
    due_at: datetime | None
    heartbeat: HeartbeatVersion

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.instance.annex_id, self.instance.instance_id)


@dataclass(frozen=True)
class TokenRecord:
    annex_id: str
    fingerprint: str


class InstanceEnd(StrEnum):
    """What `end_instance` did."""

    RELEASED = "released"  # recorded, and one quota unit went back
    MARKED = "marked"  # recorded; the annex had already ended and released everything
    UNCHANGED = "unchanged"  # it was already recorded as terminated (or was never recorded)


class ReplacementClaim(StrEnum):
    """What `claim_replacement` did."""

    CLAIMED = "claimed"  # the record is claimed and one quota unit is taken for its replacement
    SETTLED = "settled"  # already claimed, replaced or declined (a repeated delivery), or not interrupted
    NO_ROOM = "no-room"  # the annex is not running, holds its count already, or its lease ends too soon
    OVER_QUOTA = "over-quota"  # the owner's (or the stack's) live-instance limit


class TokenTaken(Exception):
    """A concurrent create with the same client token committed first."""
