"""Second-precise leases: SQS message timers, the one-minute lease-check as the backstop.

EventBridge (rules and Scheduler alike) fires at minute precision, so a lease would overshoot by up to a
minute plus a sweep's run time. Instead each lease end gets one message on the lease-timer queue with
`DelaySeconds` = seconds until the expiry (SQS allows at most 900), sent once:

- by the lease-check, for the leases that newly enter its `HORIZON`: each run arms the window from where
  the previous arming stopped (the `armed_through` mark it keeps in the table) to `now + HORIZON`, and
  moves the mark only when every timer of the window was accepted. A late or skipped run therefore
  widens the next run's window instead of leaving a gap, and a failed send is retried by the next run.
- by create, extend and shorten, when the new end is within `HORIZON + ARM_MARGIN`: the lease-check's
  window may already have passed it (the margin covers the `due` index lagging behind the write).

The lease-timer function re-reads the annex when the message becomes visible and ends it through
`end_annexes` only if its lease has really passed on a consistent read (`due_by`): an extension that
landed first wins, and an early or duplicate message changes nothing. A lost or failed message costs at
most the backstop's minute. See docs/failsafe.md for the cost and failure modes against Step Functions
and Scheduler.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from annex.aws.inventory import Ec2Inventory
from annex.core.clock import utcnow
from annex.failsafe.termination import Termination, end_expired_leases
from annex.store import AnnexStore

log = logging.getLogger(__name__)
ACTOR = "lease-timer"
MAX_DELAY_SECONDS = 900  # SQS's limit on DelaySeconds
HORIZON = timedelta(minutes=3)  # the lease-check arms what falls due before its next runs
# Create/extend/shorten also arm a lease ending just past the horizon: a lease-check whose read of the
# eventually consistent `due` index missed the new end may already have armed past it.
ARM_MARGIN = timedelta(seconds=10)
SEND_BATCH = 10  # SendMessageBatch entries per call (the API's limit)
TIMERS_OF = "lease-check"  # whose `armed_through` mark (store/sweep_status.py)


@dataclass(frozen=True)
class LeaseTimer:
    annex_id: str
    expires_at: datetime

    def body(self) -> str:
        return json.dumps({"annex_id": self.annex_id, "expires_at": self.expires_at.isoformat()})

    def delay(self, now: datetime) -> int:
        """Whole seconds to wait, rounded up (never fire before the expiry), within SQS's limit."""
        return max(0, min(MAX_DELAY_SECONDS, math.ceil((self.expires_at - now).total_seconds())))


def parse_timer(body: str) -> str:
    """The annex id a timer message names; ValueError on anything else."""
    data = json.loads(body)
    annex_id = data.get("annex_id") if isinstance(data, dict) else None
    if not isinstance(annex_id, str) or not annex_id:
        raise ValueError("a lease timer message names its annex_id")
    return annex_id


class TimerQueue:
    """The lease-timer queue. `send` batches 10 messages per SendMessageBatch call.

    A delay counts from when its message is sent, not from the caller's `now`: the lease-check decides at
    its start and sends after its sweep, seconds later at scale, and every second of that would be added
    to the lease (`clock` tells the time at each send; tests inject it)."""

    def __init__(self, sqs: Any, queue_url: str, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._clock = clock

    def arm(self, timers: Iterable[LeaseTimer], *, now: datetime) -> int:
        """Send one delayed message per timer whose expiry is within the SQS delay limit; returns how
        many were accepted. Timers further out are left to a later lease-check run."""
        pending = [t for t in timers if (t.expires_at - now).total_seconds() <= MAX_DELAY_SECONDS]
        sent = 0
        for start in range(0, len(pending), SEND_BATCH):
            chunk = pending[start : start + SEND_BATCH]
            sending_at = max(now, self._clock())
            resp = self._sqs.send_message_batch(
                QueueUrl=self._url,
                Entries=[
                    {"Id": str(i), "MessageBody": t.body(), "DelaySeconds": t.delay(sending_at)}
                    for i, t in enumerate(chunk)
                ],
            )
            sent += len(resp.get("Successful", []))
            for failed in resp.get("Failed", []):
                log.warning("could not arm a lease timer: %s", failed)
        return sent


def arm_due_soon(store: AnnexStore, queue: TimerQueue, *, now: datetime, horizon: timedelta = HORIZON) -> int:
    """The lease-check's part: a timer for every live lease ending in (armed_through, now + horizon],
    `armed_through` being where the previous run's arming stopped (at the earliest `now`: passed leases
    are the lease-check's own work). Each lease thus gets one timer from the lease-check, however late or
    far apart its runs; the mark moves only if every timer was accepted (a failed send is retried by the
    next run, and the timers that did go out are sent again: a duplicate changes nothing). The mark is
    read eventually consistent: a stale one only widens the window (duplicates, never a gap)."""
    until = now + horizon
    marked = store.timers_armed_through(TIMERS_OF)
    after = max(marked, now) if marked is not None else now
    if until <= after:
        return 0
    timers = [LeaseTimer(annex_id, expires) for annex_id, expires in store.leases_due_by(until, after=after)]
    sent = queue.arm(timers, now=now)
    if timers and sent == len(timers):
        # Only when something was sent: an idle stack's run writes nothing (a window left open is
        # read again by the next run, and still holds no lease the index knows of).
        store.record_timers_armed(TIMERS_OF, through=until)
    return sent


def arm_if_due_soon(
    queue: TimerQueue | None,
    annex_id: str,
    expires_at: datetime,
    *,
    now: datetime,
    horizon: timedelta = HORIZON,
) -> bool:
    """Create, extend and shorten's part: a timer for this lease if it ends before `now + horizon +
    ARM_MARGIN` (the lease-check may have armed its window past it already). Best effort: the record is
    already written, and a timer that could not be sent costs at most the minute sweep's lag, so a
    failure is logged, never raised."""
    if queue is None or not now < expires_at <= now + horizon + ARM_MARGIN:
        return False
    try:
        return queue.arm([LeaseTimer(annex_id, expires_at)], now=now) == 1
    except (ClientError, BotoCoreError) as exc:
        log.warning("could not arm the lease timer of %s: %s", annex_id, exc)
        return False


def fire(
    store: AnnexStore, ec2: Ec2Inventory, annex_ids: Iterable[str], *, now: datetime, retention: timedelta
) -> Termination:
    """A timer went off: end each annex only if its lease has passed by `now` on a consistent read (an
    extension that landed first wins: `skipped`); an ended annex only has its instances terminated
    again, which is harmless."""
    due = [a for a in dict.fromkeys(annex_ids) if _live_and_due(store, a, now)]
    if not due:
        return Termination()
    return end_expired_leases(store, ec2, due, actor=ACTOR, now=now, retention=retention)


def _live_and_due(store: AnnexStore, annex_id: str, now: datetime) -> bool:
    record = store.get_annex_record(annex_id)
    return record is not None and record.annex.live and record.annex.lease_expires_at <= now
