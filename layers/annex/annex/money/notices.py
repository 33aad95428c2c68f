"""Notices: events on the stack's EventBridge bus, which a rule sends to the notice topic (where each
researcher's e-mail subscription filters on their own ARN).

The event schema (`source` "annex"; `detail-type` one of `NoticeKind`; `detail` a `NoticeDetail`) is
documented in the README. Every notice names the annex, what it has cost, and the exact command to
extend it (or, once it has ended, to see it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field

from annex.core.clock import format_duration, to_iso
from annex.core.errors import AnnexError
from annex.core.models import Annex, Time
from annex.money.cost import AnnexCost, usd
from annex.money.units import Usd

SOURCE = "annex"
PUT_EVENTS_MAX = 10  # entries per PutEvents call


class NoticeKind(StrEnum):
    LEASE_ENDING = "Annex Lease Ending"
    ENDED = "Annex Ended"
    BUDGET_WARNING = "Annex Budget Warning"


class NoticeDetail(BaseModel):
    """The `detail` of every notice event."""

    model_config = ConfigDict(defer_build=True)

    kind: NoticeKind
    annex_id: str
    name: str
    owner: str = Field(description="The annex owner's IAM ARN (e-mail subscriptions filter on it).")
    state: str
    lease_expires_at: Time
    end_reason: str | None = None
    accrued_usd: Usd
    forecast_usd: Usd
    usd_per_hour: Usd
    budget_usd: Usd | None = None
    command: str = Field(description="The exact command to act on it (extend, or see it once ended).")
    message: str = Field(description="One paragraph for a person.")
    at: Time


class NoticeFailed(AnnexError):
    code = "NoticeFailed"


def _money(annex: Annex, cost: AnnexCost) -> str:
    text = f"It has cost about ${usd(cost.accrued)} so far"
    if annex.budget_usd is not None:
        text += f" of its ${usd(annex.budget_usd)} budget"
    return text


def _detail(annex: Annex, cost: AnnexCost, kind: NoticeKind, *, command: str, message: str) -> NoticeDetail:
    return NoticeDetail(
        kind=kind,
        annex_id=annex.id,
        name=annex.name,
        owner=annex.owner,
        state=annex.state.value,
        lease_expires_at=annex.lease_expires_at,
        end_reason=annex.end_reason.value if annex.end_reason else None,
        accrued_usd=usd(cost.accrued),
        forecast_usd=usd(cost.forecast),
        usd_per_hour=cost.usd_per_hour,
        budget_usd=annex.budget_usd,
        command=command,
        message=message,
        at=cost.at,
    )


def extend_command(annex: Annex) -> str:
    return f"annex-client extend {annex.name} --by 1h"


def lease_ending(annex: Annex, cost: AnnexCost, *, now: datetime) -> NoticeDetail:
    left = format_duration(max(annex.lease_expires_at - now, timedelta(seconds=1)))
    command = extend_command(annex)
    return _detail(
        annex,
        cost,
        NoticeKind.LEASE_ENDING,
        command=command,
        message=f"Annex {annex.name} ({annex.id}) ends in {left}, at {to_iso(annex.lease_expires_at)}; its "
        f"instances are then terminated. {_money(annex, cost)}, "
        f"${cost.usd_per_hour.normalize():f} an hour now. "
        f"To keep it longer: {command}",
    )


def ended(annex: Annex, cost: AnnexCost) -> NoticeDetail:
    reason = annex.end_reason.value if annex.end_reason else annex.state.value
    command = f"annex-client status {annex.name}"
    return _detail(
        annex,
        cost,
        NoticeKind.ENDED,
        command=command,
        message=f"Annex {annex.name} ({annex.id}) has ended ({reason}) and its instances were terminated. "
        f"It cost about ${usd(cost.accrued)}. Its history: {command}",
    )


def budget_warning(annex: Annex, cost: AnnexCost, *, reached_at: datetime | None) -> NoticeDetail:
    command = extend_command(annex)
    when = f" at about {to_iso(reached_at)}" if reached_at else ""
    return _detail(
        annex,
        cost,
        NoticeKind.BUDGET_WARNING,
        command=command,
        message=f"Annex {annex.name} ({annex.id}) has spent ${usd(cost.accrued)}, 80% or more of its "
        f"${usd(annex.budget_usd or Decimal(0))} budget; it ends (budget-reached) when the budget is "
        f"spent{when}. "
        f"The lease ends {to_iso(annex.lease_expires_at)} ({command} extends the lease, not the budget).",
    )


class Notifier:
    """PutEvents on the stack's bus."""

    def __init__(self, events: Any, bus_name: str) -> None:
        self._events = events
        self.bus_name = bus_name
        self.sent = 0

    def entry(self, notice: NoticeDetail) -> dict[str, Any]:
        return {
            "Source": SOURCE,
            "DetailType": notice.kind.value,
            "Detail": json.dumps(notice.model_dump(mode="json")),
            "Resources": [],
            "EventBusName": self.bus_name,
        }

    def publish(self, notices: Sequence[NoticeDetail]) -> None:
        """Raises NoticeFailed naming the entries EventBridge did not accept."""
        for start in range(0, len(notices), PUT_EVENTS_MAX):
            batch = notices[start : start + PUT_EVENTS_MAX]
            try:
                resp = self._events.put_events(Entries=[self.entry(n) for n in batch])
            except (ClientError, BotoCoreError) as exc:
                raise NoticeFailed(f"PutEvents failed: {exc}") from exc
            failed = [
                f"{n.name}: {e.get('ErrorCode')}"
                for n, e in zip(batch, resp.get("Entries", []), strict=False)
                if e.get("ErrorCode")
            ]
            self.sent += len(batch) - len(failed)
            if resp.get("FailedEntryCount") or failed:
                raise NoticeFailed(f"EventBridge refused {len(failed)} notice(s): {', '.join(failed)}")
