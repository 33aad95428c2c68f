"""The commands. Each takes the parsed arguments through a Ctx (streams, clock, the API) and returns an
exit code; expected failures are raised as ClientFailure and reported by `cli.main`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, TextIO

from annex_client import render
from annex_client.api import LIVE_STATES, AnnexApi
from annex_client.errors import (
    OK,
    CheckFailed,
    ConfigError,
    Declined,
    Interrupted,
    Refused,
    TimedOut,
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
        ("usage", f"up to {cost.instance_hours:g} instance-hours"),
        ("cost", cost.text()),
        *budget_lines(args, quote),
        ("idle stop", f"an instance with no claimed slot for {duration_text(idle)} is stopped"),
    ]
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


def cmd_request(ctx: Ctx) -> int:
    args = ctx.args
    limits = ctx.api.health()["limits"]
    body: dict[str, Any] = {
        "name": args.name,
        "count": args.count,
        "market": "spot" if args.spot else "on-demand",
        "lease": duration_text(args.lease),
        "tags": dict(args.tag),
    }
    if args.type:
        body["instance_type"] = args.type
    if args.idle:
        body["idle_timeout"] = duration_text(args.idle)
    if getattr(args, "budget", None):
        body["budget"] = args.budget
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
    detail = wait_until_ready(ctx, annex_id, name, args.timeout)
    if ctx.json:
        ctx.emit(detail)
    return OK


# --- wait ---------------------------------------------------------------------------------------------


def progress(detail: Mapping[str, Any]) -> tuple[str, str]:
    """(phase, text): requested -> launching -> running -> heartbeating, or ended/failed."""
    state = str(detail.get("state", ""))
    if state != "running":
        return state, render.state_line(detail)
    live = [i for i in detail.get("instances") or [] if i.get("state") in render.LIVE_INSTANCE_STATES]
    beating = [i for i in live if i.get("last_heartbeat_at")]
    launched = f"{detail.get('launched_count', 0)} of {detail.get('count', 0)} instances launched"
    if live and len(beating) == len(live):
        return "heartbeating", f"heartbeating: {len(beating)} of {len(live)} instances report to the pool"
    return "running", f"running: {launched}, {len(beating)} heartbeating"


def wait_until_ready(ctx: Ctx, annex_id: str, name: str, timeout: timedelta) -> dict[str, Any]:
    stream = ctx.err if ctx.json else ctx.out
    live_line = stream.isatty()
    ctx.say(f"Waiting for {name} (up to {duration_text(timeout)}; Ctrl-C stops waiting, not the annex):")
    start = _monotonic()
    shown: str | None = None
    width = 0
    try:
        while True:
            detail = ctx.api.get(annex_id)
            phase, text = progress(detail)
            elapsed = _monotonic() - start
            line = f"  [{duration_text(timedelta(seconds=elapsed)):>6}] {text}"
            if live_line:  # one line rewritten in place; a new line when the phase changes
                if shown is not None and text != shown:
                    stream.write("\n")
                    width = 0
                stream.write("\r" + line.ljust(width))
                width = len(line)
                stream.flush()
            elif text != shown:
                stream.write(line + "\n")
            shown = text
            if phase == "heartbeating":
                if live_line:
                    stream.write("\n")
                expires = parse_api_time(detail.get("lease_expires_at"))
                until = f"; the lease ends {clock_text(expires, ctx.tz)}" if expires else ""
                ctx.say(f"Ready: {name} is running jobs{until}.")
                return detail
            if phase in ("ended", "failed"):
                if live_line:
                    stream.write("\n")
                raise Refused(
                    f"{name} {render.state_line(detail)} before it was ready; "
                    f"'annex-client status {name}' shows its history",
                    status=409,
                    code="AnnexEnded",
                )
            if elapsed >= timeout.total_seconds():
                if live_line:
                    stream.write("\n")
                raise TimedOut(
                    f"gave up waiting after {duration_text(timeout)}: {name} is {text}. It keeps its lease: "
                    f"'annex-client status {name}' shows it, 'annex-client stop {name}' stops it"
                )
            _sleep(min(POLL_SECONDS, max(0.0, timeout.total_seconds() - elapsed)))
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped waiting; {name} keeps running until its lease ends "
            f"('annex-client stop {name}' stops it now)"
        ) from None


# --- extend, stop -------------------------------------------------------------------------------------


def cmd_extend(ctx: Ctx) -> int:
    args = ctx.args
    annex_id = ctx.api.resolve(args.name)
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
        return cmd_list(ctx)
    detail = ctx.api.get(ctx.api.resolve(ctx.args.name))
    if ctx.json:
        ctx.emit(detail)
    else:
        ctx.say(render.status_text(detail, _now(), ctx.tz))
    return OK


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
        (
            "lease",
            f"{d('default_lease_seconds')} by default, {d('min_lease_seconds')} to {d('max_lease_seconds')}",
        ),
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
