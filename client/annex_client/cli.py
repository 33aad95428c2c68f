"""`annex-client`: the command researchers use to rent EC2 capacity for their HTCondor pool.

Start-up matters (it runs on laptops and head nodes, often in scripts): this module imports only the
standard library's argparse plus two tiny modules. The commands, and botocore with them, are imported
after the arguments are parsed, and botocore only when a request is signed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from annex_client import __version__
from annex_client.errors import EXIT_CODES, INTERRUPTED, OK, USAGE, ClientFailure
from annex_client.timefmt import DURATION_FORMS, TIME_FORMS, parse_duration, parse_time

DESCRIPTION = """\
Rent EC2 capacity for your HTCondor pool until a deadline. Instances join the pool, run your jobs, and
always stop: when the lease ends, when idle, or when you say stop.

  annex-client configure --endpoint https://ID.execute-api.REGION.amazonaws.com/v1
  annex-client check-setup
  annex-client request bio-run-7 --count 10 --lease 4h --idle 15m --wait
  annex-client status bio-run-7
  annex-client extend bio-run-7 --by 2h
  annex-client stop bio-run-7
"""


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    return f"""\
endpoint: --endpoint, else ANNEX_ENDPOINT, else the config file ('annex-client configure').
credentials: the AWS chain (environment, --profile / AWS_PROFILE, SSO, instance role).
region: --region, else the endpoint host (execute-api.REGION), else the config file, else
  AWS_REGION, else AWS_DEFAULT_REGION or the profile's region.
durations: {DURATION_FORMS}.
times: {TIME_FORMS}.

exit codes:
{codes}
"""


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of instances (1 or more)")
    return int(text)


_USD = re.compile(r"^[0-9]{1,7}(\.[0-9]{1,2})?$")


def _usd(text: str) -> str:
    """A budget in US dollars, as the API takes it: digits with at most two decimals."""
    if not _USD.match(text.strip()):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not an amount in US dollars; write it like 50 or 12.50 (no $ or USD)"
        )
    if float(text) <= 0:
        raise argparse.ArgumentTypeError("a budget must be more than zero")
    return text.strip()


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"'{text}' is not a tag; write it as key=value")
    return key.strip(), value.strip()


def _change_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """shorten and set-idle: change a live annex."""
    p = command(
        "shorten",
        "end an annex's lease earlier",
        "Move the end of a live annex's lease earlier (at least the pool's minimum lease from now;\n"
        "to end it at once, use stop). Its instances drain before the new end.",
    )
    p.add_argument("name", metavar="NAME", help="annex name or id (ax-...)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--to", type=_duration, help="the lease ends this long from now, such as 30m")
    how.add_argument("--until", type=_time, metavar="TIME", help="the lease ends at this time")

    p = command(
        "set-idle",
        "change the idle timeout of a live annex",
        "An instance with no claimed slot for this long is terminated. Running instances use the new\n"
        "value from their next heartbeat (within a minute).",
    )
    p.add_argument("name", metavar="NAME", help="annex name or id (ax-...)")
    p.add_argument("idle_timeout", metavar="DURATION", type=_duration, help="such as 30m")


def _money_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """notify (researchers), budget and spend (administrators)."""
    p = command(
        "notify",
        "e-mail me the notices of my annexes",
        "Subscribes an e-mail address to the notices of your annexes (and no one else's): a lease about to "
        "end,\nan annex that ended, a budget 80% spent. AWS sends a confirmation e-mail first.",
    )
    p.add_argument("--email", required=True, help="where to send them")

    p = command("budget", "set an owner's monthly budget (administrators)")
    p.add_argument("owner", metavar="OWNER_ARN", help="the researcher's IAM ARN, as annexes show it")
    p.add_argument("--monthly", type=_usd, required=True, metavar="USD", help="US dollars per month")

    p = command("spend", "spend per owner for a month (administrators)")
    p.add_argument("--month", metavar="YYYY-MM", help="default: this month (UTC)")


def build_parser() -> argparse.ArgumentParser:
    # Shared options are accepted before or after the command (`--json list` and `list --json`);
    # SUPPRESS keeps a subcommand from overwriting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    shared = common.add_argument_group("connection and output")
    shared.add_argument(
        "--endpoint",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="the Annex API base URL with its stage (beats ANNEX_ENDPOINT and the config file)",
    )
    shared.add_argument("--profile", default=argparse.SUPPRESS, help="the AWS profile to sign with")
    shared.add_argument("--region", default=argparse.SUPPRESS, help="the AWS region of the API")
    shared.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON instead"
    )
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="annex-client", description=DESCRIPTION, epilog=_epilog(), formatter_class=fmt, parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"annex-client {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[common], help=summary, description=details or summary, formatter_class=fmt
        )

    p = command(
        "request",
        "request an annex (asks before spending money)",
        "Request COUNT instances for your pool for the length of a lease. Shows what it will cost and "
        "asks first;\nwithout a terminal it refuses unless --yes is given.\n\n"
        "The annex runs the jobs of one HTCondor user (--condor-user, your login name by default) that\n"
        "are sent to it; add these lines to a submit file (the name or the annex id ax-...):\n"
        '  +AnnexTarget = "NAME"\n'
        "  allowed_execute_duration = 3600   # optional: seconds the job needs; it only starts where\n"
        "                                    # it can finish before the lease ends\n"
        "--all-my-jobs runs every idle job of that user instead; --share-with lets others send jobs.",
    )
    p.add_argument("name", metavar="NAME", help="a name for the annex, unique among your live ones")
    p.add_argument("--count", type=_count, required=True, help="how many instances")
    p.add_argument("--type", metavar="TYPE", help="an instance type the pool allows (default: the pool's)")
    p.add_argument("--spot", action="store_true", help="use spot capacity (cheaper, may be interrupted)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="with --spot: replace each instance EC2 interrupts, once, while the lease and budget last",
    )
    p.add_argument("--lease", type=_duration, required=True, help="how long it may run, such as 4h")
    p.add_argument("--idle", type=_duration, help="stop an instance idle this long (default: the pool's)")
    p.add_argument("--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    p.add_argument(
        "--condor-user",
        metavar="USER",
        help="the HTCondor user whose jobs run on it (default: your login name)",
    )
    p.add_argument(
        "--share-with", action="append", default=[], metavar="USER", help="another HTCondor user (repeatable)"
    )
    p.add_argument(
        "--all-my-jobs", action="store_true", help="run every idle job of the user, not only those sent"
    )
    p.add_argument("--wait", action="store_true", help="follow it until its instances report to the pool")
    p.add_argument("--timeout", type=_duration, default=timedelta(minutes=15), help="for --wait (15m)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--budget",
        type=_usd,
        metavar="USD",
        help="end the annex (budget-reached) before it costs more than this many US dollars",
    )
    p.add_argument(
        "--client-token",
        metavar="TOKEN",
        help="repeat a request safely: the same token never creates a second annex",
    )

    p = command(
        "extend",
        "extend an annex's lease (asks before spending money)",
        "Move the end of an annex's lease later. Shows what the added time may cost and asks first;\n"
        "without a terminal it refuses unless --yes is given.",
    )
    p.add_argument("name", metavar="NAME", help="annex name or id (ax-...)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--by", type=_duration, help="add this to the current expiry, such as 2h")
    how.add_argument("--until", type=_time, metavar="TIME", help="move the expiry to this time")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    _change_commands(command)

    p = command("stop", "stop an annex now (asks first)", "Terminate the annex's instances now.")
    p.add_argument("name", metavar="NAME", help="annex name or id (ax-...)")
    p.add_argument("--reason", help="recorded in the annex's history")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p = command("status", "one annex in detail (without NAME: like list)")
    p.add_argument("name", metavar="NAME", nargs="?", help="annex name or id (ax-...)")
    p.add_argument("--all", action="store_true", help="without NAME: every owner's (administrators)")
    p.add_argument(
        "--watch", action="store_true", help="show it again every --every until it ends (Ctrl-C stops)"
    )
    p.add_argument("--every", type=_duration, default=timedelta(seconds=10), help="for --watch (10s)")
    p.add_argument(
        "--history",
        choices=("recent", "all"),
        default="recent",
        help="the newest 50 events (recent, the default) or the whole history (all)",
    )

    p = command("list", "your annexes, newest first")
    p.add_argument("--all", action="store_true", help="every owner's annexes (administrators)")

    _money_commands(command)

    command(
        "check-setup",
        "check the endpoint, your identity, the limits and the fail-safe",
        "Checks that the endpoint answers, who you are to it, the limits in force, and that the fail-safe "
        "sweeps\n(which stop instances even when your laptop is gone) have run recently.",
    )
    command(
        "configure",
        "save --endpoint, --region, --profile to the config file (no options: show settings)",
    )
    return parser


# Options whose value is a duration: argparse takes `--by -2h` for two options ("expected one argument");
# joined as `--by=-2h`, the value reaches the duration parser, which says what is wrong with it.
_DURATION_OPTIONS = frozenset({"--lease", "--idle", "--timeout", "--by", "--every", "--to"})


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        following = args[i + 1] if i + 1 < len(args) else ""
        if arg in _DURATION_OPTIONS and following[:1] == "-" and following[1:2] in tuple("0123456789Pp"):
            out.append(f"{arg}={following}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, --version, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else USAGE
    for name in ("endpoint", "profile", "region"):
        setattr(args, name, getattr(args, name, None))
    args.json = getattr(args, "json", False)
    if not args.command:
        parser.print_help(sys.stderr)
        return USAGE
    try:
        from annex_client.commands import run  # noqa: PLC0415 - deferred: keeps --help fast

        return run(args)
    except ClientFailure as exc:
        if args.json and not exc.json_emitted:
            sys.stdout.write(json.dumps(exc.body(), indent=2) + "\n")
        sys.stderr.write(f"annex-client: error: {exc.line()}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("annex-client: interrupted\n")
        return INTERRUPTED
    except BrokenPipeError:  # `annex-client list | head`: the reader left; say nothing more
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
