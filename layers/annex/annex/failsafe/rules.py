"""When an instance counts as idle or silent. Pure functions, the clock passed in.

Two deadlines govern a live instance:
- silent: `launched_at + boot_grace` until it is first heard from, then `last_heartbeat_at +
  heartbeat_loss_grace`;
- idle: `idle_since + idle timeout`, only while its last report said no slot was claimed.

The earlier of the two is when idle-reap must look at the instance (`next_check`). The stored `due_at`
(the sparse `due` index) may be earlier than that, never later: a heartbeat moves it only when it must
(`stored_check`), so most heartbeats change no index key; idle-reap looks at the instance when the stored
time comes, and `decide` says reap (and why) or when to look again.
A busy instance has no idle deadline, so it is never reaped for idleness; the lease still ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from annex.core.clock import format_duration, to_iso
from annex.core.config import ReapTiming
from annex.core.models import EndReason, Instance


@dataclass(frozen=True)
class Verdict:
    """`reason` is None when the instance stays; `next_check` is then when to look at it again."""

    reason: EndReason | None
    next_check: datetime
    detail: str = ""


def silent_after(instance: Instance, timing: ReapTiming) -> datetime:
    if instance.last_heartbeat_at is None:
        return instance.launched_at + timing.boot_grace
    return instance.last_heartbeat_at + timing.heartbeat_loss_grace


def idle_after(instance: Instance, idle_timeout: timedelta) -> datetime | None:
    if instance.claimed_slots == 0 and instance.idle_since is not None:
        return instance.idle_since + idle_timeout
    return None


def next_check(instance: Instance, idle_timeout: timedelta, timing: ReapTiming) -> datetime:
    """The instance's `due_at`: the earlier of its silence and idle deadlines (at once after a reported
    boot problem)."""
    if instance.problem is not None:
        return instance.last_heartbeat_at or instance.launched_at
    idle = idle_after(instance, idle_timeout)
    silent = silent_after(instance, timing)
    return silent if idle is None else min(idle, silent)


# A heartbeat leaves an early stored `due_at` alone while it is at least this share of the loss grace
# ahead (default grace 5m: 100 s): with 60 s heartbeats that moves the index entry on one heartbeat in
# four, and the entry still lies a heartbeat period ahead when it moves, so the sweep seldom sees it first.
KEEP_AHEAD_SHARE = 1 / 3


def stored_check(
    stored: datetime | None, exact: datetime, *, now: datetime, timing: ReapTiming
) -> datetime | None:
    """The `due_at` a heartbeat must store, given the stored one and the exact `next_check`; None leaves
    the stored one (the heartbeat then writes no index key).

    The stored time must never be later than the exact one (idle-reap would look too late), so it moves
    earlier at once. An earlier stored time is safe (idle-reap looks, finds nothing due and moves it
    forward), so it stays while it lies far enough ahead, and moves to the exact time when it comes near."""
    if stored is None or stored > exact:
        return exact
    if stored == exact or stored - now >= timing.heartbeat_loss_grace * KEEP_AHEAD_SHARE:
        return None
    return exact


def idle_since_after_report(previous: datetime | None, claimed_slots: int, now: datetime) -> datetime | None:
    """Idle since the first report with no claimed slot; a claimed slot clears it."""
    if claimed_slots > 0:
        return None
    return previous or now


def decide(instance: Instance, idle_timeout: timedelta, timing: ReapTiming, now: datetime) -> Verdict:
    """Reap an instance whose idle or silence deadline has passed (the one that passed first names the
    reason); otherwise say when to look again. An instance that reported a boot problem is reaped at once."""
    if instance.problem is not None:
        return Verdict(reason=EndReason.BOOT_PROBLEM, next_check=now, detail=instance.problem)
    silent = silent_after(instance, timing)
    idle = idle_after(instance, idle_timeout)
    passed: list[tuple[datetime, EndReason, str]] = []
    if idle is not None and idle <= now and instance.idle_since is not None:
        passed.append(
            (
                idle,
                EndReason.IDLE,
                f"no claimed slot since {to_iso(instance.idle_since)} "
                f"(idle timeout {format_duration(idle_timeout)})",
            )
        )
    if silent <= now:
        if instance.last_heartbeat_at is None:
            detail = f"never heard from within {format_duration(timing.boot_grace)} of launch"
        else:
            detail = (
                f"no heartbeat since {to_iso(instance.last_heartbeat_at)} "
                f"(grace {format_duration(timing.heartbeat_loss_grace)})"
            )
        passed.append((silent, EndReason.SILENT, detail))
    if passed:
        _deadline, reason, detail = min(passed, key=lambda p: p[0])
        return Verdict(reason=reason, next_check=now, detail=detail)
    return Verdict(reason=None, next_check=next_check(instance, idle_timeout, timing))
