"""`annex-local`: run the Annex control plane offline on 127.0.0.1.

  annex-local up --fast            in the foreground until Ctrl-C or SIGTERM
  annex-local up --fast --detach   in the background; returns once the stack is ready
  annex-local status               is it running, and where
  annex-local down                 stop a detached stack (and wait until it has stopped)

Quiet by default: everything the stack logs goes to STATE_DIR/annex-local.log (-v also prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from annex_local.state import StateDir

CHILD_FLAG = "--detached-child"  # internal: the process `up --detach` starts
READY_TIMEOUT_SECONDS = 120.0
DOWN_TIMEOUT_SECONDS = 30.0


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected Name=Value, got {text!r}")
    return name, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="annex-local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    state_dir = argparse.ArgumentParser(add_help=False)
    state_dir.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".annex-local"),
        help="where env, credentials and the log go (default: .annex-local)",
    )
    up = sub.add_parser("up", parents=[state_dir], help="start the local stack")
    up.add_argument("--detach", action="store_true", help="run in the background; return once it is ready")
    up.add_argument("--port", type=int, default=0, help="gateway port on 127.0.0.1 (default: any free port)")
    up.add_argument("--aws-port", type=int, default=0, help="embedded AWS port (default: any free port)")
    up.add_argument("--fast", action="store_true", help="5 s sweeps and heartbeats, short grace periods")
    up.add_argument("--sweep-period", type=float, help="seconds between sweeps (default: the template's)")
    up.add_argument("--heartbeat-period", type=float, default=60.0, help="simulated agents' timer (s)")
    up.add_argument(
        "--param", type=_param, action="append", default=[], metavar="Name=Value", help="template parameter"
    )
    up.add_argument(
        "-v", "--verbose", action="store_true", help="also print the log on the terminal (in the foreground)"
    )
    up.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    down = sub.add_parser("down", parents=[state_dir], help="stop the stack running on the state directory")
    down.add_argument("--timeout", type=float, default=DOWN_TIMEOUT_SECONDS, help="seconds to wait (30)")
    sub.add_parser("status", parents=[state_dir], help="is a stack running on the state directory, and where")
    return p


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _error(text: str) -> None:
    sys.stderr.write(f"annex-local: {text}\n")
    sys.stderr.flush()


# --- up ---------------------------------------------------------------------------------------------


def _refuse_if_running(state: StateDir) -> bool:
    pid = state.running_pid()
    if pid is None:
        return False
    where = state.read_env().get("ANNEX_ENDPOINT", "still starting")
    _error(
        f"a stack is already running on {state.path} (pid {pid}, API {where}); "
        f"'annex-local down --state-dir {state.path}' stops it, or use another --state-dir"
    )
    return True


def _clear_stale(state: StateDir) -> None:
    stale = state.stale()
    if stale:
        _error(
            f"{state.path} holds the state of a stack that did not stop cleanly (it was killed): that stack "
            "is gone, and with it every annex, instance and name it held (the local stack keeps nothing "
            "across restarts). Removed its stale env; starting afresh."
        )
        state.clear()


class _Tee:
    """stdout for -v: the log file and the terminal."""

    def __init__(self, *streams: IO[str]) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


def _setup_logging(log_file: IO[str], *, verbose: bool, terminal: IO[str] | None) -> None:
    """The stack's own log (requests, handler failures, nodes, sweeps) to the log file; on the terminal,
    errors only (or everything with -v). Other libraries' warnings go to the file too.

    The stack's handlers sit on the `annex_local` logger itself, not on the root logger: the functions'
    Powertools Logger (service `annex`) puts a filter on every root handler that drops records from
    loggers whose name starts with `annex`, which would silence `annex_local` too."""
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")

    def handlers(file_level: int) -> list[logging.Handler]:
        out: list[logging.Handler] = [logging.StreamHandler(log_file)]
        out[0].setLevel(file_level)
        if terminal is not None:
            to_terminal = logging.StreamHandler(terminal)
            to_terminal.setLevel(logging.INFO if verbose else logging.ERROR)
            out.append(to_terminal)
        for handler in out:
            handler.setFormatter(fmt)
        return out

    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for handler in handlers(logging.NOTSET):
        root.addHandler(handler)
    own = logging.getLogger("annex_local")
    own.handlers.clear()
    own.setLevel(logging.INFO)
    own.propagate = False
    for handler in handlers(logging.INFO):
        own.addHandler(handler)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every AWS call


def _banner(state: StateDir, env: dict[str, str], sweep: str, *, detached: bool) -> str:
    stop = f"annex-local down --state-dir {state.path}" if detached else "Ctrl-C"
    return (
        "annex-local is up.\n"
        f"  API (SigV4):      {env.get('ANNEX_ENDPOINT', '?')}\n"
        f"  embedded AWS:     {env.get('AWS_ENDPOINT_URL', '?')}\n"
        f"  sweeps:           {sweep}\n"
        f"  profiles:         alice, bob, admin\n"
        f"  log:              {state.log}\n"
        f"  use it:           set -a; . {state.env}; set +a; AWS_PROFILE=alice annex-client check-setup\n"
        f"  stop it:          {stop}"
    )


def _sweep_text(args: argparse.Namespace) -> str:
    period = args.sweep_period or (5.0 if args.fast else None)
    return f"every {period:g} s" if period else "on the template schedules"


def cmd_up(args: argparse.Namespace, argv: Sequence[str]) -> int:
    state = StateDir(args.state_dir)
    if not args.detached_child:
        if _refuse_if_running(state):
            return 1
        _clear_stale(state)
        if args.detach:
            return _detach(args, state, argv)
    code = _foreground(args, state)
    # Everything is stopped, flushed and closed by now. Tearing down the interpreter (moto's and
    # botocore's many objects) would take seconds more, during which `down` would still see the process.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _detach(args: argparse.Namespace, state: StateDir, argv: Sequence[str]) -> int:
    """Start `up` as a new session in the background and return once it has written its env file."""
    state.path.mkdir(parents=True, exist_ok=True)
    child_argv = [a for a in argv if a != "--detach"] + [CHILD_FLAG]
    state.log.write_text("")  # a fresh log; every writer below appends (O_APPEND), none overwrites
    with state.log.open("a") as log:
        proc = subprocess.Popen(  # noqa: S603 - this very program, with the arguments it was given
            [sys.executable, "-m", "annex_local.cli", *child_argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this terminal, or closing it, does not reach the stack
        )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    try:
        while True:
            if state.env.exists() and state.running_pid() == proc.pid:
                _say(_banner(state, state.read_env(), _sweep_text(args), detached=True))
                return 0
            code = proc.poll()
            if code is not None:
                _report_failed_start(state, code)
                return code or 1
            if time.monotonic() > deadline:
                proc.terminate()
                _error(f"the stack was not ready after {READY_TIMEOUT_SECONDS:g} s; see {state.log}")
                return 1
            time.sleep(0.1)
    except KeyboardInterrupt:
        proc.terminate()
        _error("interrupted; the stack being started was stopped")
        return 130


def _report_failed_start(state: StateDir, code: int) -> None:
    try:
        lines = state.log.read_text().splitlines()
    except OSError:
        lines = []
    said = [line for line in lines if line.startswith("annex-local: ")]
    for line in said:
        sys.stderr.write(line + "\n")
    if not said:
        tail = "\n".join(lines[-20:])
        _error(f"the stack exited with code {code} before it was ready; the end of {state.log}:\n{tail}")
    sys.stderr.flush()


def _foreground(args: argparse.Namespace, state: StateDir) -> int:
    lock = state.acquire()
    if lock is None:  # another `up` took it since we looked
        _refuse_if_running(state)
        return 1
    state.write_pid()
    terminal = sys.stdout
    log_file = state.log.open("a" if args.detached_child else "w", buffering=1)
    # The functions' Powertools Logger and Metrics write to sys.stdout as it is when their module is
    # imported (below, by the stack): point it at the log file first, so the terminal stays quiet.
    sys.stdout = _Tee(log_file, terminal) if args.verbose and not args.detached_child else log_file
    _setup_logging(log_file, verbose=args.verbose, terminal=None if args.detached_child else sys.stderr)
    # Powertools warns on every invocation that emits no metric; locally that is noise.
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    try:
        return _run(args, state, terminal)
    finally:
        sys.stdout = terminal
        state.pid_file.unlink(missing_ok=True)
        log_file.close()
        lock.close()


def _run(args: argparse.Namespace, state: StateDir, terminal: IO[str]) -> int:
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
        logging.getLogger("annex_local").error("refusing to start: %s", exc)
        _error(f"refusing to start: {exc}")
        return 2
    logging.getLogger("annex_local").info("ready: API %s", stack.api_url)
    if not args.detached_child:
        terminal.write(_banner(state, state.read_env(), _sweep_text(args), detached=False) + "\n")
        terminal.flush()
    try:
        # Not a bare stop.wait(): a signal delivered to another thread does not wake the main thread out
        # of a lock wait, and Python runs signal handlers in the main thread only; waking twice a second
        # lets the SIGTERM handler run whichever thread the kernel chose.
        while not stop.wait(0.5):
            pass
    finally:
        stack.stop()
        logging.getLogger("annex_local").info("stopped")
        if not args.detached_child:
            terminal.write("annex-local stopped.\n")
            terminal.flush()
    return 0


# --- down, status -------------------------------------------------------------------------------------


def cmd_down(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    pid = state.running_pid()
    if pid is None:
        if state.stale():
            state.clear()
            _say(
                f"annex-local was not running on {state.path}; "
                "removed the stale env of a stack that was killed."
            )
        else:
            _say(f"annex-local is not running on {state.path}.")
        return 0
    deadline = time.monotonic() + args.timeout
    while pid == -1 and time.monotonic() < deadline:  # still starting: its pid is not written yet
        time.sleep(0.1)
        pid = state.running_pid()
    if pid is None:
        _say("annex-local stopped.")
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    # Stopped: its lock is free (it no longer serves) and its process has exited (its ports are free).
    while state.running_pid() is not None or _alive(pid):
        if time.monotonic() > deadline:
            _error(f"the stack (pid {pid}) did not stop within {args.timeout:g} s; see {state.log}")
            return 1
        time.sleep(0.1)
    _say("annex-local stopped.")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child of ours that exited but was not reaped yet (a zombie) has stopped too.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def cmd_status(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    pid = state.running_pid()
    if pid is None:
        note = (
            " (a stale env is left from a stack that was killed: its annexes are gone)"
            if state.stale()
            else ""
        )
        _say(f"annex-local is not running on {state.path}{note}.")
        return 1
    env = state.read_env()
    if not state.env.exists():
        _say(f"annex-local is starting on {state.path} (pid {pid}); log: {state.log}")
        return 0
    _say(
        f"annex-local is up (pid {pid}).\n"
        f"  API (SigV4):      {env.get('ANNEX_ENDPOINT', '?')}\n"
        f"  embedded AWS:     {env.get('AWS_ENDPOINT_URL', '?')}\n"
        f"  env:              {state.env}\n"
        f"  log:              {state.log}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.command == "up":
        return cmd_up(args, argv)
    if args.command == "down":
        return cmd_down(args)
    return cmd_status(args)


if __name__ == "__main__":
    sys.exit(main())
