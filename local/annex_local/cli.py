"""`annex-local up`: run the control plane offline in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings
from pathlib import Path
from types import FrameType


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected Name=Value, got {text!r}")
    return name, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="annex-local", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local stack in the foreground")
    up.add_argument(
        "--state-dir", type=Path, default=Path(".annex-local"), help="where env and credentials go"
    )
    up.add_argument("--port", type=int, default=0, help="gateway port on 127.0.0.1 (default: any free port)")
    up.add_argument("--aws-port", type=int, default=0, help="embedded AWS port (default: any free port)")
    up.add_argument("--fast", action="store_true", help="5 s sweeps and heartbeats, short grace periods")
    up.add_argument("--sweep-period", type=float, help="seconds between sweeps (default: the template's)")
    up.add_argument("--heartbeat-period", type=float, default=60.0, help="simulated agents' timer (s)")
    up.add_argument(
        "--param", type=_param, action="append", default=[], metavar="Name=Value", help="template parameter"
    )
    up.add_argument("-v", "--verbose", action="store_true", help="log every invocation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Powertools warns on every invocation that emits no metric; locally that is noise.
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from annex_local.runtime import install_code_paths

    install_code_paths()  # before anything imports the handlers or the domain package
    from annex_local.stack import LocalStack, Options

    options = Options(
        state_dir=args.state_dir,
        port=args.port,
        aws_port=args.aws_port,
        sweep_period=args.sweep_period,
        heartbeat_period=args.heartbeat_period,
        params=dict(args.param),
        fast=args.fast,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack = LocalStack(options).start()
    except ValueError as exc:
        sys.stderr.write(f"annex-local: {exc}\n")
        return 2
    sweep = options.effective_sweep_period()
    sys.stdout.write(
        f"annex-local is up.\n"
        f"  API (SigV4):      {stack.api_url}\n"
        f"  embedded AWS:     {stack.aws.endpoint}\n"
        f"  sweeps:           {'every ' + str(sweep) + ' s' if sweep else 'on the template schedules'}\n"
        f"  profiles:         alice, bob, admin\n"
        f"  use it:           set -a; . {options.state_dir / 'env'}; set +a; "
        f"AWS_PROFILE=alice annex-client check-setup\n"
        f"Ctrl-C stops it.\n"
    )
    sys.stdout.flush()
    try:
        stop.wait()
    finally:
        stack.stop()
        sys.stdout.write("annex-local stopped.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
