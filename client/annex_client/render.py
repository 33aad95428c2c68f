"""Human output: aligned tables and short lines. Pure functions of the API's JSON, `now` and a timezone."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, tzinfo
from typing import Any

from annex_client.pricing import source_text
from annex_client.timefmt import clock_text, duration_text, parse_api_time, relative

LIVE_STATES = ("requested", "launching", "running")
LIVE_INSTANCE_STATES = ("pending", "running")
# The usual causes of instances that never report to the pool (the agent's heartbeat is how they join).
SILENT_CAUSES = (
    "the image lacks HTCondor or the agent, the subnet cannot reach the central manager or the API, the "
    "pool token is wrong, or the collector refuses them; your pool administrator can read each "
    "instance's console output"
)
_ARN = re.compile(r"^arn:aws[\w-]*:(?:iam|sts)::\d{12}:(user|role|assumed-role)/(.+)$")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, no trailing spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def who(arn: str) -> str:
    """`alice` for user/alice, `PoolAdmin/carol` for an assumed-role session; anything else as is."""
    match = _ARN.match(arn)
    if not match:
        return arn
    kind, rest = match.groups()
    return rest if kind == "assumed-role" else rest.rsplit("/", 1)[-1]


def lease_left(annex: dict[str, Any], now: datetime) -> str:
    if annex.get("state") not in LIVE_STATES:
        reason = annex.get("end_reason")
        return f"ended ({reason})" if reason else str(annex.get("state", "-"))
    expires = parse_api_time(annex.get("lease_expires_at"))
    if expires is None:
        return "-"
    if expires <= now:
        return "expired"
    return duration_text(expires - now, units=2)


def instances_text(annex: dict[str, Any]) -> str:
    if annex.get("state") in ("requested", "launching"):
        return f"0/{annex.get('count', 0)}"
    text = (
        f"{annex.get('launched_count', 0)}/{annex.get('count', 0)}"
        if annex.get("state") in LIVE_STATES
        else "-"
    )
    spot = spot_counts(annex)
    return f"{text} ({spot})" if spot else text


def spot_counts(annex: Mapping[str, Any]) -> str:
    """`2 interrupted, 1 replaced`: the annex's spot interruptions (empty when there were none)."""
    interrupted, replaced = int(annex.get("interrupted_count") or 0), int(annex.get("replaced_count") or 0)
    if not interrupted and not replaced:
        return ""
    return f"{interrupted} interrupted" + (f", {replaced} replaced" if replaced else "")


def usd_text(value: Any) -> str:
    try:
        return f"${float(value):,.2f}"
    except (TypeError, ValueError):
        return "-"


def cost_cell(annex: Mapping[str, Any]) -> str:
    """`$1.23` so far, `$1.23/$5.00` against its budget; `?` when a price is unknown."""
    cost = annex.get("cost") or {}
    if not cost:
        return "-"
    text = usd_text(cost.get("accrued_usd")) + ("" if cost.get("complete", True) else "?")
    budget = annex.get("budget_usd", cost.get("budget_usd"))
    if budget is not None:
        text += "/" + usd_text(budget)
    return text


def annex_table(annexes: Sequence[dict[str, Any]], now: datetime, tz: tzinfo | None, *, owners: bool) -> str:
    headers = ["NAME", "ID", "STATE", "INSTANCES", "TYPE", "MARKET", "LEASE LEFT", "COST", "CREATED"]
    if owners:
        headers.insert(1, "OWNER")
    rows = []
    for a in annexes:
        created = parse_api_time(a.get("created_at"))
        row = [
            str(a.get("name", "")),
            str(a.get("id", "")),
            str(a.get("state", "")),
            instances_text(a),
            types_text(a.get("instance_types") or []),
            str(a.get("market", "")),
            lease_left(a, now),
            cost_cell(a),
            clock_text(created, tz) if created else "-",
        ]
        if owners:
            row.insert(1, who(str(a.get("owner", ""))))
        rows.append(row)
    return table(headers, rows)


def types_text(types: Sequence[str]) -> str:
    if len(types) <= 1:
        return "".join(types)
    return f"{types[0]} (+{len(types) - 1})"


def activity(instance: dict[str, Any], now: datetime) -> str:
    """busy 3/4, idle 0/4 (for 5m), or why there is nothing to say."""
    replaces = f"; replaces {instance['replaces']}" if instance.get("replaces") else ""
    if instance.get("state") not in LIVE_INSTANCE_STATES:
        reason = instance.get("end_reason")
        text = f"ended ({reason})" if reason else "-"
        if instance.get("replaced_by"):
            text += f"; replaced by {instance['replaced_by']}"
        elif instance.get("replacement_note"):
            text += "; not replaced"
        return text + replaces
    notice = instance.get("spot_notice")
    if notice:
        return f"draining (spot {notice})" + replaces
    return _slots(instance, now) + replaces


def _slots(instance: dict[str, Any], now: datetime) -> str:
    claimed, total = instance.get("claimed_slots"), instance.get("total_slots")
    if claimed is None or total is None:
        return "no heartbeat yet"
    if claimed > 0:
        return f"busy {claimed}/{total}"
    since = parse_api_time(instance.get("idle_since"))
    return f"idle {claimed}/{total}" + (f" for {duration_text(now - since, units=2)}" if since else "")


def instance_table(detail: dict[str, Any], now: datetime) -> str:
    rows = []
    for inst in detail.get("instances") or []:
        heartbeat = parse_api_time(inst.get("last_heartbeat_at"))
        live = inst.get("state") in LIVE_INSTANCE_STATES
        rows.append(
            [
                str(inst.get("instance_id", "")),
                str(inst.get("instance_type", "")),
                str(inst.get("zone") or "-"),
                str(inst.get("market", "")),
                str(inst.get("state", "")),
                activity(inst, now),
                relative(heartbeat, now) if heartbeat else "never",
                lease_left(detail, now) if live else "-",
            ]
        )
    headers = ["INSTANCE", "TYPE", "ZONE", "MARKET", "STATE", "SLOTS", "LAST HEARTBEAT", "LEASE LEFT"]
    return table(headers, rows)


def history_table(detail: dict[str, Any], tz: tzinfo | None) -> str:
    rows = []
    # The API answers newest first (events within one second in their order): oldest first here.
    for event in reversed(detail.get("history") or []):
        at = parse_api_time(event.get("at"))
        rows.append(
            [
                clock_text(at, tz) if at else "-",
                who(str(event.get("actor", ""))),
                str(event.get("action", "")),
                str(event.get("detail", "")),
            ]
        )
    return table(["TIME", "BY", "EVENT", "DETAIL"], rows)


def state_line(annex: Mapping[str, Any]) -> str:
    state = str(annex.get("state", ""))
    if state == "running":
        text = f"running: {annex.get('launched_count', 0)} of {annex.get('count', 0)} instances launched"
    elif state in ("ended", "failed"):
        text = f"{state} ({annex.get('end_reason') or 'no reason recorded'})"
    else:
        text = state
    note = annex.get("launch_note")
    # A complete launch's note ("3 of 3 launched") says nothing new; a partial or failed one says why.
    complete = annex.get("launched_count") == annex.get("count") and state != "failed"
    return f"{text}; {note}" if note and not complete else text


def draining_text(annex: Mapping[str, Any], now: datetime) -> str | None:
    """`draining: lease ends in 15s, no new jobs start` once a live annex is inside the drain window
    (the API's `drains_at`: the lease end minus the pool's DrainBeforeLeaseEnd); None otherwise."""
    drains = parse_api_time(annex.get("drains_at"))
    expires = parse_api_time(annex.get("lease_expires_at"))
    if annex.get("state") not in LIVE_STATES or drains is None or expires is None or now < drains:
        return None
    ends = f"ends {relative(expires, now)}" if expires > now else "has ended"
    return f"draining: lease {ends}, no new jobs start"


def jobs_of(detail: Mapping[str, Any]) -> str:
    """Whose jobs the annex runs, in HTCondor terms (a job's Owner)."""
    user = str(detail.get("condor_user") or "?")
    text = (
        f"{user} (every idle job)"
        if detail.get("all_my_jobs")
        else f'{user} (+AnnexTarget = "{detail.get("name")}")'
    )
    shared = detail.get("share_with") or []
    return text + (f"; shared with {', '.join(shared)}" if shared else "")


def annex_summary(detail: dict[str, Any], now: datetime, tz: tzinfo | None) -> str:
    expires = parse_api_time(detail.get("lease_expires_at"))
    created = parse_api_time(detail.get("created_at"))
    ended = parse_api_time(detail.get("ended_at"))
    idle = timedelta(seconds=int(detail.get("idle_timeout_seconds") or 0))
    lines = [
        ("state", "; ".join(filter(None, [state_line(detail), draining_text(detail, now)]))),
        ("owner", str(detail.get("owner", ""))),
        ("jobs of", jobs_of(detail)),
        ("type", f"{', '.join(detail.get('instance_types') or [])}, {detail.get('market', '')}"),
    ]
    if detail.get("replace"):
        lines.append(("spot", "each interrupted instance is replaced once, while the lease and budget last"))
    if expires is not None:
        if detail.get("state") in LIVE_STATES:
            when = relative(expires, now)
        elif ended is not None and expires - ended >= timedelta(seconds=1):
            when = f"ended early: {duration_text(expires - ended, units=2)} of it unused"
        else:
            when = "ran to its end"
        lines.append(("lease", f"until {clock_text(expires, tz)} ({when})"))
    lines.append(("idle stop", f"after {duration_text(idle, units=2)} with no claimed slot"))
    if created is not None:
        lines.append(("created", f"{clock_text(created, tz)} ({relative(created, now)})"))
    if ended is not None:
        lines.append(("ended", f"{clock_text(ended, tz)} ({relative(ended, now)})"))
    lines.extend(cost_lines(detail))
    tags = detail.get("tags") or {}
    if tags:
        lines.append(("tags", ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))))
    width = max(len(k) for k, _ in lines)
    head = f"Annex {detail.get('name')} ({detail.get('id')})"
    return "\n".join([head, *(f"  {k.ljust(width)}  {v}" for k, v in lines)])


def status_text(detail: dict[str, Any], now: datetime, tz: tzinfo | None) -> str:
    parts = [annex_summary(detail, now, tz)]
    if detail.get("instances"):
        parts.append(instance_table(detail, now))
    else:
        parts.append("No instances yet.")
    silent = [i for i in detail.get("instances") or [] if i.get("end_reason") == "silent"]
    if silent:
        parts.append(
            f"{len(silent)} instance(s) ended silent: they never reported to the pool, or stopped reporting. "
            f"The usual causes: {SILENT_CAUSES}."
        )
    interrupted = [i for i in detail.get("instances") or [] if i.get("spot_notice") == "interruption"]
    if interrupted:
        parts.append(
            f"{len(interrupted)} spot instance(s) interrupted by EC2: told to drain, their running jobs "
            "vacated (HTCondor reruns them elsewhere); the history has the notices."
        )
        parts.append(replacement_text(detail, interrupted))
    parts.extend(problem_lines(detail))
    if detail.get("history"):
        parts.append(history_table(detail, tz))
    return "\n\n".join(parts)


def replacement_text(detail: Mapping[str, Any], interrupted: Sequence[Mapping[str, Any]]) -> str:
    """What became of the interrupted instances' capacity."""
    if not detail.get("replace"):
        return "This annex does not replace interrupted instances (request with --replace for that)."
    replaced = [i for i in interrupted if i.get("replaced_by")]
    declined = [i for i in interrupted if i.get("replacement_note")]
    lines = [f"{i['replaced_by']} replaced {i['instance_id']}." for i in replaced]
    lines += [f"{i['instance_id']} was not replaced: {i['replacement_note']}." for i in declined]
    waiting = len(interrupted) - len(replaced) - len(declined)
    if waiting:
        lines.append(f"{waiting} replacement(s) to come once EC2 reclaims the instance.")
    return "\n".join(lines)


def problem_lines(detail: Mapping[str, Any]) -> list[str]:
    """One line per instance that reported a boot problem: why it did not join."""
    return [
        f"{i.get('instance_id')} did not join: {i['problem']} — see the deploy guide"
        for i in detail.get("instances") or []
        if i.get("problem")
    ]


def cost_lines(detail: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What it has cost, what it costs per hour, where that leads by the lease end, and the budget."""
    cost = detail.get("cost") or {}
    if not cost:
        return []
    lines = [
        ("cost", f"{usd_text(cost.get('accrued_usd'))} so far (an estimate; Cost Explorer has the bill)")
    ]
    if detail.get("state") in LIVE_STATES:
        bound = "at most " if cost.get("upper_bound") else ""
        lines.append(
            (
                "rate",
                f"{bound}${float(cost.get('usd_per_hour') or 0):g}/h now; "
                f"{usd_text(cost.get('forecast_usd'))} if it runs to the lease end",
            )
        )
    if cost.get("budget_usd") is not None:
        text = f"{usd_text(cost.get('budget_usd'))}"
        reached = parse_api_time(cost.get("budget_reached_at"))
        if reached is not None:
            text += f", reached about {reached.strftime('%Y-%m-%d %H:%M UTC')} at this rate (then it ends)"
        lines.append(("budget", text))
    if cost.get("unpriced_types"):
        lines.append(("unpriced", ", ".join(cost["unpriced_types"]) + " (no price known: left out)"))
    prices = cost.get("prices") or []
    if prices:
        lines.append(
            (
                "prices",
                "; ".join(
                    f"{p.get('instance_type')} {p.get('market')} ${p.get('usd_per_hour')}/h "
                    f"({source_text(p)})"
                    for p in prices
                ),
            )
        )
    return lines


def owner_totals(annexes: Sequence[Mapping[str, Any]]) -> str:
    """Per owner: annexes, live ones, accrued cost and the live cost per hour (administrators)."""
    totals: dict[str, list[float]] = {}
    for a in annexes:
        cost = a.get("cost") or {}
        t = totals.setdefault(str(a.get("owner", "")), [0, 0, 0.0, 0.0])
        t[0] += 1
        live = a.get("state") in LIVE_STATES
        t[1] += 1 if live else 0
        t[2] += float(cost.get("accrued_usd") or 0)
        t[3] += float(cost.get("usd_per_hour") or 0) if live else 0.0
    rows = [
        [who(owner), str(int(t[0])), str(int(t[1])), f"${t[2]:,.2f}", f"${t[3]:,.4g}/h"]
        for owner, t in sorted(totals.items(), key=lambda kv: -kv[1][2])
    ]
    return table(["OWNER", "ANNEXES", "LIVE", "COST SO FAR", "LIVE RATE"], rows)


def spend_table(report: Mapping[str, Any]) -> str:
    rows = [
        [
            who(str(o.get("owner", ""))),
            str(o.get("annexes", 0)),
            usd_text(o.get("spent_usd")),
            usd_text(o.get("committed_usd")),
            usd_text(o.get("monthly_budget_usd")) if o.get("monthly_budget_usd") is not None else "none",
            usd_text(o.get("remaining_usd")) if o.get("remaining_usd") is not None else "-",
        ]
        for o in report.get("owners") or []
    ]
    total = usd_text(report.get("total_spent_usd"))
    head = f"Spend in {report.get('month')} (UTC), {total} in all; {report.get('note', '')}"
    return head + "\n\n" + table(["OWNER", "ANNEXES", "SPENT", "COMMITTED", "BUDGET", "LEFT"], rows)
