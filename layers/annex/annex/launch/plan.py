"""Launch planning: pure functions of an annex and its settings, no AWS call. How many calls and with which
client tokens, which tags, and the note a user reads afterwards."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from annex.aws.inventory import TAG_ID, TAG_NAME, TAG_OWNER, TAG_STACK
from annex.core.models import Annex
from annex.failsafe.lease_tag import lease_tags
from annex.launch.capacity import MAX_LAUNCH_BATCH, Refusal

MAX_NOTE = 1000  # characters of launch_note kept on the record

Result = Literal["running", "partial", "failed", "stopped", "ended", "duplicate", "not-found"]


@dataclass(frozen=True)
class LaunchOutcome:
    annex_id: str
    result: Result
    requested: int = 0
    launched: int = 0  # instances the annex has after this run
    launched_now: int = 0  # of which this run launched
    terminated: int = 0
    config_errors: int = 0  # refusals the administrator must act on (image, subnet, permissions...)
    note: str = ""


# --- pure helpers -------------------------------------------------------------------------------


def batch_sizes(count: int, limit: int = MAX_LAUNCH_BATCH) -> list[int]:
    """`count` instances in calls of at most `limit`: ceil(count / limit) calls."""
    full, rest = divmod(max(count, 0), limit)
    return [limit] * full + ([rest] if rest else [])


def client_token(annex_id: str, *parts: object) -> str:
    """A deterministic EC2 ClientToken (at most 64 characters) for one call of one annex's launch."""
    digest = hashlib.sha256("|".join([annex_id, *map(str, parts)]).encode()).hexdigest()
    return f"{annex_id}-{digest[: 63 - len(annex_id)]}"


def ordered_subnets(annex_id: str, subnet_ids: Sequence[str]) -> list[str]:
    """The subnets rotated by the annex id: annexes spread over the zones, and one annex always tries
    them in the same order (so its client tokens repeat on a retry)."""
    if not subnet_ids:
        return []
    start = int(annex_id.removeprefix("ax-"), 16) % len(subnet_ids)
    return [*subnet_ids[start:], *subnet_ids[:start]]


def annex_tags(annex: Annex, stack_name: str) -> dict[str, str]:
    """The tags every instance (and volume) of the annex carries from its first second."""
    tags = {"Name": f"annex-{annex.name}", **annex.tags}
    tags.update(
        {
            TAG_ID: annex.id,
            TAG_NAME: annex.name,
            TAG_OWNER: annex.owner[:256],
            TAG_STACK: stack_name,
            **lease_tags(annex),
        }
    )
    return tags


def launch_note(requested: int, launched: int, refusals: Iterable[Refusal]) -> str:
    """`7 of 10 launched: InsufficientInstanceCapacity for c7i.xlarge in us-east-1a, us-east-1b`."""
    groups: dict[tuple[str, str], list[str]] = {}
    for refusal in refusals:
        label = refusal.ec2_code
        if not refusal.capacity and refusal.message:
            label = f"{refusal.ec2_code} ({refusal.message.removeprefix(refusal.ec2_code + ': ')[:160]})"
        zones = groups.setdefault((label, refusal.instance_type or "any type"), [])
        if refusal.zone and refusal.zone not in zones:
            zones.append(refusal.zone)
    head = f"{launched} of {requested} launched"
    if not groups:
        return head
    reasons = "; ".join(
        f"{label} for {itype}" + (f" in {', '.join(zones)}" if zones else "")
        for (label, itype), zones in groups.items()
    )
    sep = ": " if launched < requested else " after "
    return f"{head}{sep}{reasons}"[:MAX_NOTE]
