"""When an instance counts as idle or silent. Pure functions, the clock passed in.

Two deadlines govern a live instance:
- silent: `launched_at + boot_grace` until it is first heard from, then `last_heartbeat_at +
  heartbeat_loss_grace + refresh` (the stored time lags the last report by less than `refresh`: see
  `refresh_interval`);
- idle: `idle_since + idle timeout`, only while its last report said no slot was claimed.

The earlier of the two is when idle-reap must look at the instance (`next_check`). The stored `due_at`
(the sparse `due` index) may be earlier than that, never later: a heartbeat moves it only when it must
(`stored_check`), so most heartbeats change no index key, and a heartbeat that changes nothing stored
writes nothing at all until the stored last-seen time is R old (`refresh_interval`); idle-reap looks at
the instance when the stored time comes, and `decide` says reap (and why) or when to look again.
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


# A heartbeat that changes nothing stored rewrites `last_heartbeat_at` only once it is this share of the
# loss grace old (`refresh_interval`).
REFRESH_SHARE = 1 / 2


def refresh_interval(timing: ReapTiming) -> timedelta:
    """R: the most the stored `last_heartbeat_at` lags the instance's last report.

    A heartbeat that changes nothing stored (slots, idle_since, problem, spot notice, state, the `due`
    entry) writes nothing while the stored time is younger than R, so the stored time is always later
    than (last report - R). The silence deadline is therefore `stored + grace + R`: never earlier than
    `last report + grace` (a live instance gets the whole loss grace between two reports, as before), at
    most `last report + grace + R` (silence is detected at most R later than with a write per report).
    R = grace / 2 (150 s for the default 5 minutes): the agent reports every 60 s (a 5 s timer accuracy
    and 0-15 s of jitter: 45-80 s apart), so a steady instance is written on every third report. With a
    grace below two report periods R is shorter than the time between reports and every report writes,
    as before: no configuration needs refusing, since R never shortens the grace."""
    return timing.heartbeat_loss_grace * REFRESH_SHARE


def silent_after(instance: Instance, timing: ReapTiming) -> datetime:
    if instance.last_heartbeat_at is None:
        return instance.launched_at + timing.boot_grace
    return instance.last_heartbeat_at + timing.heartbeat_loss_grace + refresh_interval(timing)


def needs_refresh(last_heartbeat_at: datetime, *, now: datetime, timing: ReapTiming) -> bool:
    """Whether a report that changes nothing else must still write, to keep the stored last-seen time
    within R of the last report."""
    return now - last_heartbeat_at >= refresh_interval(timing)


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


# A heartbeat leaves an early stored `due_at` alone while it lies at least this share of the loss grace
# (default 5m: 100 s) beyond the next write the instance's reports are sure to make (the next refresh,
# R after the stored last-seen time): the entry then still lies a report period ahead when that write
# moves it, so the sweep seldom sees it first, and a report that would write nothing never has to write
# just to move it. With 60 s heartbeats the entry moves on every other refresh (one report in six).
KEEP_AHEAD_SHARE = 1 / 3


def stored_check(
    stored: datetime | None, exact: datetime, *, now: datetime, timing: ReapTiming, refreshed: datetime
) -> datetime | None:
    """The `due_at` a heartbeat must store, given the stored one and the exact `next_check`; None leaves
    the stored one (the heartbeat then writes no index key). `refreshed` is the `last_heartbeat_at` the
    record will hold (`now` when this report writes, the stored one when it writes nothing).

    The stored time must never be later than the exact one (idle-reap would look too late), so it moves
    earlier at once. An earlier stored time is safe (idle-reap looks, finds nothing due and moves it
    forward), so it stays while it lies far enough beyond the next refresh, and moves to the exact time
    when it comes near."""
    if stored is None or stored > exact:
        return exact
    next_write = max(now, refreshed + refresh_interval(timing))
    if stored == exact or stored - next_write >= timing.heartbeat_loss_grace * KEEP_AHEAD_SHARE:
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
