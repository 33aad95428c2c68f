"""The commands. Each takes the parsed arguments through a Ctx (streams, clock, the API) and returns an
exit code; expected failures are raised as ClientFailure and reported by `cli.main`."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, TextIO

from annex_client import render
from annex_client.api import ANNEX_ID, LIVE_STATES, AnnexApi
from annex_client.errors import (
    OK,
    CheckFailed,
    ConfigError,
    Declined,
    Interrupted,
    Refused,
    ServiceFailed,
    TimedOut,
    Unreachable,
    UsageError,
)
from annex_client.pricing import estimate, month_text
from annex_client.settings import (
    ENDPOINT_ENV,
    Settings,
    check_endpoint,
    require_endpoint,
    resolve,
    write_config,
)
from annex_client.timefmt import clock_text, duration_text, iso_z, parse_api_time, relative
from annex_client.transport import Signer, Transport

POLL_SECONDS = 5.0
# The sweeps run every few minutes; one that has not succeeded for longer is not protecting anyone.
# The sweeps run every minute; the stack alarms when none has succeeded for 5 minutes.
SWEEP_STALE_AFTER = timedelta(minutes=5)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _monotonic() -> float:
    return time.monotonic()


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class Ctx:
    """What a command needs from the outside world, in one place (tests replace the module's
    `_sleep`, `_monotonic` and `_now`, and the HTTP layer in transport)."""

    def __init__(
        self,
        args: argparse.Namespace,
        *,
        out: TextIO,
        err: TextIO,
        stdin: TextIO,
        environ: Mapping[str, str],
        tz: tzinfo | None = None,
    ) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.stdin = stdin
        self.environ = environ
        self.tz = tz
        self.json: bool = bool(args.json)
        self._settings: Settings | None = None
        self._signer: Signer | None = None
        self._api: AnnexApi | None = None

    # --- configuration and the API --------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = resolve(
                endpoint=self.args.endpoint,
                profile=self.args.profile,
                region=self.args.region,
                environ=self.environ,
            )
        return self._settings

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            self._signer = Signer(profile=self.settings.profile, region=self.settings.region)
        return self._signer

    @property
    def api(self) -> AnnexApi:
        if self._api is None:
            transport = Transport(require_endpoint(self.settings), self.signer, sleep=_sleep)
            self._api = AnnexApi(transport)
        return self._api

    # --- output ---------------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        """Human output: stdout, or stderr when stdout carries JSON."""
        (self.err if self.json else self.out).write(text + "\n")

    def emit(self, data: Any) -> None:
        self.out.write(json.dumps(data, indent=2) + "\n")

    def confirm(self, question: str, *, yes: bool, refusal: str) -> None:
        """Ask on the terminal. Without one, refuse unless --yes: a script must say so explicitly."""
        if yes:
            return
        if not self.stdin.isatty():
            raise UsageError(f"{refusal}; no terminal to ask on, so pass --yes to confirm")
        self.err.write(f"{question} [y/N] ")
        self.err.flush()
        answer = self.stdin.readline()
        if answer.strip().lower() not in ("y", "yes"):
            raise Declined("nothing done: not confirmed")


# --- checks before the plan and the prompt ---------------------------------------------------------

NAME_MAX = 63
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def check_name(name: str) -> None:
    """The API's name rule, said plainly; and no name an id could be mistaken for."""
    problem = None
    bad = sorted(set(_NAME_CHARS.findall(name)))
    if not name:
        problem = "it is empty"
    elif bad:
        shown = ", ".join("a space" if c == " " else f"'{c}'" for c in bad)
        problem = f"it contains {shown}"
    elif not name[0].isalnum():
        problem = f"it starts with '{name[0]}'"
    elif len(name) > NAME_MAX:
        problem = f"it is {len(name)} characters long"
    elif ANNEX_ID.match(name.lower()):
        raise UsageError(
            f"'{name}' looks like an annex id (ax- and 16 hex digits): commands would take it for one, "
            "so the annex could not be reached by name; choose another name"
        )
    if problem:
        raise UsageError(
            f"'{name}' cannot name an annex: {problem}. Use letters, digits, '.', '_' and '-', starting "
            f"with a letter or digit, at most {NAME_MAX} characters (such as bio-run-7)"
        )


def check_against_limits(args: argparse.Namespace, limits: Mapping[str, Any]) -> None:
    """What the API would refuse, found before the plan and the prompt, in the API's own words."""

    def d(key: str) -> timedelta:
        return timedelta(seconds=int(limits[key]))

    problems: list[tuple[str, str]] = []
    allowed = [str(t) for t in limits.get("allowed_instance_types") or []]
    if args.type and args.type not in allowed:
        problems.append(
            (
                "instance_type",
                f"instance type '{args.type}' is not allowed here; choose one of: {', '.join(allowed)}",
            )
        )
    per_annex = int(limits["max_instances_per_annex"])
    if args.count > per_annex:
        problems.append(
            (
                "count",
                f"at most {per_annex} instances per annex; ask for fewer or split the work across annexes",
            )
        )
    lease = args.lease
    if lease < d("min_lease_seconds"):
        problems.append(("lease", f"the lease must be at least {duration_text(d('min_lease_seconds'))}"))
    elif lease > d("max_lease_seconds"):
        problems.append(
            (
                "lease",
                f"the lease may be at most {duration_text(d('max_lease_seconds'))}; request less and extend "
                "it later with 'annex-client extend'",
            )
        )
    idle = args.idle or d("default_idle_timeout_seconds")
    if idle < d("min_idle_timeout_seconds"):
        least = duration_text(d("min_idle_timeout_seconds"))
        problems.append(("idle_timeout", f"the idle timeout must be at least {least}"))
    elif idle > lease:
        problems.append(("idle_timeout", "the idle timeout must not be longer than the lease"))
    if problems:
        raise Refused(
            "this pool's limits refuse the request",
            status=422,
            code="PolicyViolation",
            fields=[{"field": f, "reason": r} for f, r in problems],
        )


# --- request ----------------------------------------------------------------------------------------


def _request_summary(
    args: argparse.Namespace,
    limits: Mapping[str, Any],
    now: datetime,
    tz: tzinfo | None,
    quote: Mapping[str, Any],
) -> str:
    chosen = args.type or str(limits["default_instance_type"])
    types = [chosen]
    if args.spot and not args.type:  # the service lets spot use every allowed type, the default first
        types += [t for t in limits.get("allowed_instance_types", []) if t != chosen]
    market = "spot" if args.spot else "on-demand"
    idle = args.idle or timedelta(seconds=int(limits["default_idle_timeout_seconds"]))
    hours = args.lease.total_seconds() / 3600
    cost = estimate(quote, args.count, hours, spot=args.spot, several=len(types) > 1)
    what = f"{args.count} x {types[0]}, {market}"
    if len(types) > 1:
        what = f"{args.count} x {market}, any of {', '.join(types)}"
    lines = [
        ("instances", what),
        ("lease", f"{duration_text(args.lease)} (until {clock_text(now + args.lease, tz)})"),
        ("usage", f"up to {round(cost.instance_hours, 2):g} instance-hours"),
        ("cost", cost.text()),
        *budget_lines(args, quote),
        *(
            [("spot", "each interrupted instance is replaced once, while the lease and budget last")]
            if getattr(args, "replace", False)
            else []
        ),
        ("idle stop", f"an instance with no claimed slot for {duration_text(idle)} is stopped"),
    ]
    jobs = f"{condor_user(args)}'s jobs " + (
        "(every idle one)" if args.all_my_jobs else f'sent to it (+AnnexTarget = "{args.name}")'
    )
    if args.share_with:
        jobs += f", and those {', '.join(args.share_with)} send to it"
    lines.append(("jobs", jobs))
    if args.tag:
        lines.append(("tags", ", ".join(f"{k}={v}" for k, v in args.tag)))
    width = max(len(k) for k, _ in lines)
    body = "\n".join(f"  {k.ljust(width)}  {v}" for k, v in lines)
    return f"Request annex {args.name}:\n{body}"


def budget_lines(args: argparse.Namespace, quote: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The annex's own budget (if given) and the owner's month, from the API's quote."""
    lines = []
    if getattr(args, "budget", None):
        lines.append(("budget", f"${args.budget}: the annex ends (budget-reached) before it costs more"))
    month = month_text(quote)
    if month:
        lines.append(("this month", month))
    return lines


def condor_user(args: Any) -> str:
    """--condor-user, or the local login name: a job's Owner on this access point."""
    if args.condor_user:
        return str(args.condor_user)
    try:
        return getpass.getuser()
    except (KeyError, OSError) as exc:
        raise UsageError("cannot tell your login name; give --condor-user") from exc


def cmd_request(ctx: Ctx) -> int:
    args = ctx.args
    check_name(args.name)
    if getattr(args, "replace", False) and not args.spot:
        raise UsageError("--replace needs --spot: only spot instances are interrupted")
    limits = ctx.api.health()["limits"]
    check_against_limits(args, limits)
    body: dict[str, Any] = {
        "name": args.name,
        "count": args.count,
        "market": "spot" if args.spot else "on-demand",
        "lease": duration_text(args.lease),
        "tags": dict(args.tag),
        "condor_user": condor_user(args),
        "share_with": list(args.share_with),
        "all_my_jobs": args.all_my_jobs,
    }
    if args.type:
        body["instance_type"] = args.type
    if args.idle:
        body["idle_timeout"] = duration_text(args.idle)
    if getattr(args, "budget", None):
        body["budget"] = args.budget
    if getattr(args, "replace", False):
        body["replace"] = True
    quote = ctx.api.estimate({"request": body})
    ctx.err.write(_request_summary(args, limits, _now(), ctx.tz, quote) + "\n")
    if quote.get("allowed") is False:
        raise Refused(str(quote.get("refusal")), status=409, code="BudgetExceeded")
    ctx.confirm("Request it?", yes=args.yes, refusal="this request would start paid instances")
    # One token per invocation: the transport's retries after a network error repeat it, so a lost
    # answer never becomes a second annex. --client-token extends that across invocations.
    body["client_token"] = args.client_token or f"annex-client-{uuid.uuid4().hex}"
    token = body["client_token"]
    annex, created = ctx.api.create(body)
    name, annex_id = annex["name"], annex["id"]
    if created:
        ctx.say(f"Requested {name} ({annex_id}): {render.state_line(annex)}.")
    else:
        ctx.say(f"Already requested with client token {token}: {name} ({annex_id}) is {annex['state']}.")
    if not args.wait:
        ctx.say(f"Follow it with: annex-client status {name}")
        if ctx.json:
            ctx.emit(annex)
        return OK
    detail = wait_until_ready(ctx, annex_id, name, args.timeout, first=annex)
    if ctx.json:
        ctx.emit(detail)
    return OK


# --- wait ---------------------------------------------------------------------------------------------


def slots_text(instances: list[Mapping[str, Any]]) -> str:
    """`busy`, `idle`, or `2 busy, 1 idle` for instances that report."""
    busy = sum(1 for i in instances if (i.get("claimed_slots") or 0) > 0)
    idle = len(instances) - busy
    if not idle:
        return "busy"
    if not busy:
        return "idle"
    return f"{busy} busy, {idle} idle"


def progress(detail: Mapping[str, Any]) -> tuple[str, str]:
    """(phase, text): requested -> launching -> running -> joined, or ended/failed."""
    state = str(detail.get("state", ""))
    if state != "running":
        return state, render.state_line(detail)
    live = [i for i in detail.get("instances") or [] if i.get("state") in render.LIVE_INSTANCE_STATES]
    beating = [i for i in live if i.get("last_heartbeat_at")]
    asked = int(detail.get("count") or len(live))
    if live and len(beating) == len(live):
        return "joined", f"{len(beating)} of {asked} instances joined the pool, {slots_text(beating)}"
    launched = f"{detail.get('launched_count', 0)} of {asked} instances launched"
    return "running", f"running: {launched}, {len(beating)} joined the pool"


SILENT_HINT = render.SILENT_CAUSES
# How long --wait keeps polling through network errors and 5xx answers before it gives up.
TRANSIENT_GRACE = timedelta(minutes=2)


def _lease_note(detail: Mapping[str, Any] | None, name: str, tz: tzinfo | None) -> str:
    expires = parse_api_time((detail or {}).get("lease_expires_at"))
    until = f"until {clock_text(expires, tz)}" if expires else "until its lease ends"
    return (
        f"{name} keeps its lease {until}: 'annex-client status {name} --watch' follows it, "
        f"'annex-client stop {name}' stops it"
    )


def _silent(detail: Mapping[str, Any]) -> bool:
    return any(i.get("end_reason") == "silent" for i in detail.get("instances") or [])


class _ProgressLine:
    """--wait's progress: on a terminal one line rewritten in place (a new line when the text changes),
    elsewhere one line per change."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.start = _monotonic()
        self.shown: str | None = None
        self.width = 0

    def elapsed(self) -> float:
        return _monotonic() - self.start

    def show(self, text: str) -> None:
        line = f"  [{duration_text(timedelta(seconds=self.elapsed())):>6}] {text}"
        if self.live:
            if self.shown is not None and text != self.shown:
                self.stream.write("\n")
                self.width = 0
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
        elif text != self.shown:
            self.stream.write(line + "\n")
        self.shown = text

    def end(self) -> None:
        if self.live:
            self.stream.write("\n")


def wait_until_ready(
    ctx: Ctx, annex_id: str, name: str, timeout: timedelta, first: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    ctx.say(f"Waiting for {name} (up to {duration_text(timeout)}; Ctrl-C stops waiting, not the annex):")
    line = _ProgressLine(ctx.err if ctx.json else ctx.out)
    limit = timeout.total_seconds()
    last: Mapping[str, Any] | None = first
    failing_since: float | None = None
    try:
        while True:
            elapsed = line.elapsed()
            try:
                detail = ctx.api.get(annex_id)
            except (Unreachable, ServiceFailed) as exc:
                # A network blip or a 5xx must not end the wait: keep asking for a while.
                failing_since = elapsed if failing_since is None else failing_since
                if elapsed - failing_since >= TRANSIENT_GRACE.total_seconds() or elapsed >= limit:
                    line.end()
                    raise type(exc)(f"{exc.message}. {_lease_note(last, name, ctx.tz)}") from None
                line.show(f"no answer from the API ({exc.line()}); still trying")
                _sleep(min(POLL_SECONDS, max(0.0, limit - elapsed)))
                continue
            failing_since, last = None, detail
            phase, text = progress(detail)
            line.show(text)
            if phase == "joined":
                line.end()
                expires = parse_api_time(detail.get("lease_expires_at"))
                until = f"; the lease ends {clock_text(expires, ctx.tz)}" if expires else ""
                ctx.say(f'Ready: {text}{until}. Send jobs to it with: +AnnexTarget = "{name}"')
                return detail
            if phase in ("ended", "failed"):
                line.end()
                problems = render.problem_lines(detail)
                if problems:
                    hint = f" ({'; '.join(problems)})"
                elif _silent(detail):
                    hint = f" (instances that never join usually mean {SILENT_HINT})"
                else:
                    hint = ""
                raise Refused(
                    f"{name} {render.state_line(detail)} before it was ready{hint}; "
                    f"'annex-client status {name}' shows its history",
                    status=409,
                    code="AnnexEnded",
                )
            if elapsed >= limit:
                line.end()
                hint = f" Instances that never join usually mean {SILENT_HINT}." if phase == "running" else ""
                raise TimedOut(
                    f"gave up waiting after {duration_text(timeout)}: {name} is {text}. "
                    f"{_lease_note(detail, name, ctx.tz)}.{hint}"
                )
            _sleep(min(POLL_SECONDS, max(0.0, limit - elapsed)))
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting; {_lease_note(last, name, ctx.tz)}") from None


# --- extend, stop -------------------------------------------------------------------------------------


def _extend_plan(
    detail: Mapping[str, Any],
    limits: Mapping[str, Any],
    target: datetime,
    now: datetime,
    tz: tzinfo | None,
    *,
    quote: Mapping[str, Any],
) -> tuple[str, datetime]:
    """What extending to `target` adds (capped as the API caps it: MaxLease ahead of now), and its cost."""
    current = parse_api_time(detail.get("lease_expires_at")) or now
    cap = now + timedelta(seconds=int(limits["max_lease_seconds"]))
    new = min(target, cap)
    added = max(timedelta(0), new - current)
    if detail.get("state") in ("requested", "launching"):
        count = int(detail.get("count") or 0)
    else:
        live = [i for i in detail.get("instances") or [] if i.get("state") in render.LIVE_INSTANCE_STATES]
        count = len(live)
    types = list(detail.get("instance_types") or [])
    spot = detail.get("market") == "spot"
    cost = estimate(quote, count, added.total_seconds() / 3600, spot=spot, several=len(types) > 1)
    lease = f"until {clock_text(current, tz)} -> {clock_text(new, tz)} (+{duration_text(added, units=2)})"
    if new < target:
        lease += f"; capped: a lease reaches at most {duration_text(cap - now, units=2)} ahead of now"
    lines = [
        ("lease", lease),
        ("usage", f"up to {round(cost.instance_hours, 2):g} more instance-hours ({count} live instances)"),
        ("cost", cost.text().replace(" = ", " more = ", 1) if cost.usd is not None else cost.text()),
    ]
    month = month_text(quote)
    if month:
        lines.append(("this month", month))
    width = max(len(k) for k, _ in lines)
    body = "\n".join(f"  {k.ljust(width)}  {v}" for k, v in lines)
    return f"Extend annex {detail.get('name')}:\n{body}", new


def cmd_extend(ctx: Ctx) -> int:
    args = ctx.args
    annex_id = ctx.api.resolve(args.name)
    detail = ctx.api.get(annex_id)
    name = str(detail.get("name"))
    if detail.get("state") not in LIVE_STATES:
        raise Refused(
            f"{name} ({annex_id}) has {render.state_line(detail)}; an ended annex cannot be extended "
            f"(request a new one)",
            status=409,
            code="LeaseConflict",
        )
    now = _now()
    current = parse_api_time(detail.get("lease_expires_at")) or now
    target = current + args.by if args.by is not None else args.until
    if target <= max(current, now):
        raise Refused(
            f"{clock_text(target, ctx.tz)} is not later than the lease's current end "
            f"({clock_text(current, ctx.tz)}); extend moves the end later",
            status=422,
            code="ValidationError",
        )
    limits = ctx.api.health()["limits"]
    how = {"by": duration_text(args.by)} if args.by is not None else {"until": iso_z(args.until)}
    quote = ctx.api.estimate({"extend": {"annex_id": annex_id, **how}})
    plan, _new = _extend_plan(detail, limits, target, now, ctx.tz, quote=quote)
    ctx.err.write(plan + "\n")
    if quote.get("allowed") is False:
        raise Refused(str(quote.get("refusal")), status=409, code="BudgetExceeded")
    ctx.confirm("Extend it?", yes=args.yes, refusal="this extension would keep paid instances running longer")
    if args.by is not None:
        result = ctx.api.extend(annex_id, by=duration_text(args.by))
    else:
        result = ctx.api.extend(annex_id, until=iso_z(args.until))
    if ctx.json:
        ctx.emit(result)
        return OK
    annex = result["annex"]
    expires = parse_api_time(annex["lease_expires_at"])
    assert expires is not None
    ctx.say(
        f"The lease of {annex['name']} now ends {clock_text(expires, ctx.tz)} ({relative(expires, _now())})."
    )
    if result.get("capped"):
        ctx.say(f"Capped: {result.get('message')}")
    quote = result.get("quote") or {}
    if quote.get("adds_usd") is not None:
        month = month_text(quote)
        ctx.say(f"It adds about ${float(quote['adds_usd']):,.2f}" + (f"; {month}." if month else "."))
    return OK


def _live_annex(ctx: Ctx, verb: str) -> tuple[str, dict[str, Any]]:
    annex_id = ctx.api.resolve(ctx.args.name)
    detail = ctx.api.get(annex_id)
    if detail.get("state") not in LIVE_STATES:
        raise Refused(
            f"{detail.get('name')} ({annex_id}) has {render.state_line(detail)}; an ended annex cannot be "
            f"{verb}",
            status=409,
            code="LeaseConflict",
        )
    return annex_id, detail


def cmd_shorten(ctx: Ctx) -> int:
    args = ctx.args
    annex_id, _detail = _live_annex(ctx, "shortened")
    if args.to is not None:
        annex = ctx.api.shorten(annex_id, to=duration_text(args.to))
    else:
        annex = ctx.api.shorten(annex_id, until=iso_z(args.until))
    if ctx.json:
        ctx.emit(annex)
        return OK
    expires = parse_api_time(annex["lease_expires_at"])
    assert expires is not None
    ctx.say(
        f"The lease of {annex['name']} now ends {clock_text(expires, ctx.tz)} ({relative(expires, _now())}); "
        "its instances drain before then and are terminated at that time."
    )
    return OK


def cmd_set_idle(ctx: Ctx) -> int:
    annex_id, _detail = _live_annex(ctx, "changed")
    annex = ctx.api.set_idle_timeout(annex_id, duration_text(ctx.args.idle_timeout))
    if ctx.json:
        ctx.emit(annex)
        return OK
    idle = duration_text(timedelta(seconds=int(annex["idle_timeout_seconds"])))
    ctx.say(
        f"The idle timeout of {annex['name']} is now {idle}; its instances use it from their next "
        "heartbeat (within a minute)."
    )
    return OK


def cmd_stop(ctx: Ctx) -> int:
    args = ctx.args
    annex_id = ctx.api.resolve(args.name)
    detail = ctx.api.get(annex_id)
    name = detail["name"]
    if detail.get("state") not in LIVE_STATES:
        ctx.say(f"{name} ({annex_id}) has already {render.state_line(detail)}; nothing to stop.")
        if ctx.json:
            ctx.emit(detail)
        return OK
    live = [i for i in detail.get("instances") or [] if i.get("state") in render.LIVE_INSTANCE_STATES]
    ctx.confirm(
        f"Stop {name} ({annex_id}) now? Its {len(live)} instance(s) will be terminated and running jobs "
        "interrupted.",
        yes=args.yes,
        refusal=f"stopping {name} would terminate its instances",
    )
    result = ctx.api.stop(annex_id, reason=args.reason)
    if ctx.json:
        ctx.emit(result)
        return OK
    ended = [i for i in result.get("instances") or [] if i.get("state") not in render.LIVE_INSTANCE_STATES]
    ctx.say(f"Stopped {name} ({annex_id}): {render.state_line(result)}; {len(ended)} instance(s) terminated.")
    return OK


# --- status, list -------------------------------------------------------------------------------------


def cmd_list(ctx: Ctx) -> int:
    everyone = bool(getattr(ctx.args, "all", False))
    try:
        annexes = ctx.api.list(everyone=everyone)
    except Refused as exc:
        if everyone and exc.code == "Forbidden":  # the API speaks of its query parameter, scope=all
            raise Refused(
                "only pool administrators may list every owner's annexes; drop --all",
                status=exc.status,
                code=exc.code,
            ) from None
        raise
    if ctx.json:
        ctx.emit({"annexes": annexes, "next_token": None})
        return OK
    if not annexes:
        ctx.say("No annexes. Request one with: annex-client request NAME --count N --lease 4h")
        return OK
    ctx.say(render.annex_table(annexes, _now(), ctx.tz, owners=everyone))
    if everyone:
        ctx.say("\n" + render.owner_totals(annexes))
    return OK


def cmd_status(ctx: Ctx) -> int:
    if not ctx.args.name:
        if getattr(ctx.args, "watch", False):
            raise UsageError("--watch follows one annex: give its NAME")
        return cmd_list(ctx)
    annex_id = ctx.api.resolve(ctx.args.name)
    if not getattr(ctx.args, "watch", False):
        detail = ctx.api.get(annex_id, all_history=getattr(ctx.args, "history", "recent") == "all")
        if ctx.json:
            ctx.emit(detail)
        else:
            ctx.say(render.status_text(detail, _now(), ctx.tz))
            if detail.get("history_next_token"):
                ctx.say(f"(older history: annex-client status {ctx.args.name} --history all)")
        return OK
    return _watch(ctx, annex_id)


def _watch(ctx: Ctx, annex_id: str) -> int:
    """Show the annex again every --every until it has ended (then once more, and exit 0)."""
    every = ctx.args.every.total_seconds()
    clear = ctx.out.isatty() and not ctx.json
    name = ctx.args.name
    try:
        while True:
            detail = ctx.api.get(annex_id)
            name = str(detail.get("name", name))
            if ctx.json:
                ctx.out.write(json.dumps(detail) + "\n")  # one JSON document per line
            else:
                if clear:
                    ctx.out.write("\x1b[H\x1b[2J")
                ctx.say(render.status_text(detail, _now(), ctx.tz))
                if detail.get("state") in LIVE_STATES:
                    ctx.say(
                        f"\n(every {duration_text(ctx.args.every)}; Ctrl-C stops watching, not the annex)\n"
                    )
            ctx.out.flush()
            if detail.get("state") not in LIVE_STATES:
                return OK
            _sleep(every)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped watching; {name} is unchanged by it") from None


# --- check-setup, configure ---------------------------------------------------------------------------


def _limits_lines(limits: Mapping[str, Any]) -> list[tuple[str, str]]:
    def d(key: str) -> str:
        return duration_text(timedelta(seconds=int(limits[key])))

    default_type = limits["default_instance_type"]
    types = [f"{t} (default)" if t == default_type else t for t in limits["allowed_instance_types"]]
    return [
        ("instance types", ", ".join(types)),
        ("per annex", f"at most {limits['max_instances_per_annex']} instances"),
        ("per owner", f"at most {limits['max_live_instances_per_owner']} live instances"),
        # `request` asks for --lease every time (no silent default spends money); the API's own default
        # applies only to callers that send none.
        ("lease", f"{d('min_lease_seconds')} to {d('max_lease_seconds')}, given with request --lease"),
        (
            "idle stop",
            f"{d('default_idle_timeout_seconds')} by default, at least {d('min_idle_timeout_seconds')}",
        ),
    ]


def sweep_checks(sweeps: list[Mapping[str, Any]], now: datetime) -> list[tuple[str, str, str | None]]:
    """(sweep name, what to say, the problem or None) for each fail-safe sweep."""
    out: list[tuple[str, str, str | None]] = []
    for sweep in sweeps:
        name = str(sweep.get("name"))
        last = parse_api_time(sweep.get("last_success_at"))
        if last is None:
            text = "NEVER RAN: the cloud is not enforcing leases and idle stops; tell your pool administrator"
            out.append((name, text, f"{name} never ran"))
        elif now - last > SWEEP_STALE_AFTER:
            ago = relative(last, now)
            text = f"STALE: last succeeded {ago} (it runs every minute); tell your pool administrator"
            out.append((name, text, f"{name} last succeeded {ago}"))
        else:
            out.append((name, f"ok, last succeeded {relative(last, now)}", None))
    return out


def cmd_check_setup(ctx: Ctx) -> int:
    s = ctx.settings
    endpoint = require_endpoint(s)
    ctx.say(f"endpoint     {endpoint}  (from {s.endpoint_source})")
    credentials = ctx.signer.describe()
    region = ctx.signer.region
    ctx.say(f"region       {region}  (from {s.region_source})")
    source = credentials["method"]
    if source != "env":
        source += f", profile {credentials['profile']}"
    ctx.say(f"credentials  {source}, access key {credentials['access_key']}")
    started = _monotonic()
    health = ctx.api.health()
    took = (_monotonic() - started) * 1000
    ctx.say(f"API          answered GET /health in {took:.0f} ms")
    admin = " (a pool administrator)" if health.get("is_admin") else ""
    ctx.say(f"you are      {health.get('caller')}{admin}")
    ctx.say("")
    ctx.say("Limits in force")
    rows = _limits_lines(health["limits"])
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        ctx.say(f"  {key.ljust(width)}  {value}")
    ctx.say("")
    ctx.say("Fail-safe sweeps (they stop instances even when your laptop is gone)")
    checks = sweep_checks(health.get("sweeps") or [], _now())
    width = max((len(n) for n, _, _ in checks), default=0)
    for name, text, _problem in checks:
        ctx.say(f"  {name.ljust(width)}  {text}")
    problems = [problem for _name, _text, problem in checks if problem]
    if not checks:
        problems.append("the API reported no fail-safe sweeps")
    if ctx.json:
        ctx.emit(
            {
                "endpoint": endpoint,
                "endpoint_source": s.endpoint_source,
                "region": region,
                "region_source": s.region_source,
                "credentials": credentials,
                "health_ms": round(took),
                "health": health,
                "problems": problems,
            }
        )
    if problems:
        failure = CheckFailed(f"check-setup found {len(problems)} problem(s): " + "; ".join(problems))
        failure.json_emitted = ctx.json  # the report above already carries them
        raise failure
    ctx.say("")
    ctx.say("All good.")
    return OK


def cmd_configure(ctx: Ctx) -> int:
    args = ctx.args
    given = {k: getattr(args, k) for k in ("endpoint", "region", "profile") if getattr(args, k)}
    if given:
        if "endpoint" in given:
            given["endpoint"] = check_endpoint(given["endpoint"])
        path = ctx.settings.config_file
        try:
            write_config(path, given)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
        ctx.say(f"Saved to {path}: " + ", ".join(f"{k} = {v}" for k, v in sorted(given.items())))
        env_endpoint = ctx.environ.get(ENDPOINT_ENV)
        if env_endpoint and "endpoint" in given and env_endpoint.rstrip("/") != given["endpoint"]:
            ctx.say(f"Note: {ENDPOINT_ENV} is set to {env_endpoint} and takes precedence over the file.")
        ctx._settings = None
    s = ctx.settings
    rows = [
        ("config file", str(s.config_file), "exists" if s.config_file.exists() else "not written yet"),
        ("endpoint", s.endpoint or "-", s.endpoint_source),
        ("profile", s.profile or ctx.environ.get("AWS_PROFILE") or "default", s.profile_source),
        ("region", s.region or "-", s.region_source),
    ]
    if ctx.json:
        ctx.emit({key: {"value": value, "from": source} for key, value, source in rows})
    elif not given:
        ctx.say(render.table(["SETTING", "VALUE", "FROM"], [list(r) for r in rows]))
    return OK


# --- money: notices, budgets, spend ---------------------------------------------------------------


def cmd_notify(ctx: Ctx) -> int:
    result = ctx.api.notify(ctx.args.email)
    if ctx.json:
        ctx.emit(result)
    else:
        ctx.say(str(result.get("message", "")) + ".")
    return OK


def cmd_budget(ctx: Ctx) -> int:
    result = ctx.api.set_budget(ctx.args.owner, ctx.args.monthly)
    if ctx.json:
        ctx.emit(result)
    else:
        ctx.say(
            f"The monthly budget of {render.who(str(result.get('owner', '')))} is now "
            f"${float(result['monthly_usd']):,.2f} ({result.get('source')})."
        )
    return OK


def cmd_spend(ctx: Ctx) -> int:
    report = ctx.api.spend(ctx.args.month)
    if ctx.json:
        ctx.emit(report)
    else:
        ctx.say(render.spend_table(report))
    return OK


COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "request": cmd_request,
    "extend": cmd_extend,
    "shorten": cmd_shorten,
    "set-idle": cmd_set_idle,
    "stop": cmd_stop,
    "status": cmd_status,
    "list": cmd_list,
    "check-setup": cmd_check_setup,
    "configure": cmd_configure,
    "notify": cmd_notify,
    "budget": cmd_budget,
    "spend": cmd_spend,
}


def run(args: argparse.Namespace) -> int:
    ctx = Ctx(args, out=sys.stdout, err=sys.stderr, stdin=sys.stdin, environ=os.environ)
    return COMMANDS[args.command](ctx)
