"""Strict fakes of the HTCondor tools the heartbeat agent runs: condor_status, condor_drain and
condor_config_val. Installed as symlinks named after the tool (see `install`), they parse their
arguments the way the real tools do (HTCondor's `is_dash_arg_prefix` rules, the option order of the
real parse loop, taken from src/condor_status.V6/status.cpp and src/condor_tools/drain.cpp at V9_0_0
and on the 25.x branch) and answer as the emulated version does:

- an option the real tool does not know gets the real error and exit code;
- an option the real tool knows but this fake does not emulate exits 99 naming it (never an answer);
- `condor_status -startd` on 9.0 lists the slot ads (then the same as `-slots`); from 24.4 on it lists
  the startd's daemon ad, which has no State, SlotType or Cpus; `-slots` lists the slot ads on both;
- `-direct HOST` must name this machine (FULL_HOSTNAME), or the tool fails to locate the startd.

The machine is a JSON file (FAKE_CONDOR_MACHINE): {"version": "9.0.19" | "25.0.1", "hostname": ...,
"slots": [ClassAd dicts], "startd_up": bool, "draining": bool}; each call is appended to FAKE_CONDOR_LOG.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

EMULATED_VERSIONS = ("9.0.19", "25.0.1")
NOT_EMULATED = 99

# condor_status's parse loop, in order: (name, minimum prefix, colon form allowed, arguments taken).
# -af/-autoformat (and -aaf on 25.x) take every following argument up to the next one starting with '-'.
_STATUS_COMMON = [
    ("avail", 2, False, 0),
    ("pool", 1, False, 1),
    ("ads", 2, True, 1),
    ("format", 1, False, 2),
    ("autoformat", 5, True, "attrs"),
    ("af", 2, True, "attrs"),
]
_STATUS_REST_9 = [
    ("print-format", 2, True, 1),
    ("wide", 3, True, 0),
    ("natural", 3, True, 0),
    ("target", 4, False, 1),
    ("constraint", 3, False, 1),
    ("annex-slots", 5, False, 0),
    ("annex-name", 10, False, 1),
    ("direct", 3, False, 1),
    ("diagnose", 3, True, 0),
    ("debug", 2, False, 0),
    ("defrag", 3, False, 0),
    ("help", 1, False, 0),
    ("limit", 2, False, 1),
    ("long", 1, True, 0),
    ("xml", 1, False, 0),
    ("json", 2, False, 0),
    ("group-by", 5, False, 0),
    ("attributes", 2, False, 1),
    ("claimed", 2, False, 0),
    ("data", 2, False, 0),
    ("run", 1, False, 0),
    ("cod", 3, False, 0),
    ("java", 1, False, 0),
    ("absent", 2, False, 0),
    ("offline", 2, False, 0),
    ("merge", 5, False, 1),
    ("vm", 2, False, 0),
    ("slots", 2, False, 0),
    ("compact", 3, False, 0),
    ("nocompact", 5, False, 0),
    ("server", 2, False, 0),
    ("state", 4, False, 0),
    ("snapshot", 4, True, 0),
    ("statistics", 5, False, 1),
    ("startd", 4, False, 0),
    ("schedd", 2, False, 0),
    ("grid", 1, False, 0),
    ("subsystem", 4, False, 1),
    ("license", 2, False, 0),
    ("storage", 3, False, 0),
    ("negotiator", 1, False, 0),
    ("generic", 2, False, 0),
    ("any", 2, False, 0),
    ("sort", 2, False, 1),
    ("submitters", 4, False, 0),
    ("master", 1, False, 0),
    ("collector", 3, False, 0),
    ("world", 1, False, 0),
    ("ckptsrvr", 2, False, 0),
    ("total", 1, False, 0),
    ("expert", 1, False, 0),
    ("version", 3, False, 0),
]


def _rest_25() -> list[tuple[str, int, bool, object]]:
    """25.x: -aaf, -gpus, -broken, -lvm, -healthy and -multiple are new, -debug takes a colon form and
    -total became -totals; the order is the real loop's."""
    by_name = {entry[0]: entry for entry in _STATUS_REST_9}
    by_name["debug"] = ("debug", 2, True, 0)
    by_name.update(
        {
            "gpus": ("gpus", 3, False, 0),
            "broken": ("broken", 4, False, 0),
            "lvm": ("lvm", 3, True, 0),
            "healthy": ("healthy", 4, True, 0),
            "multiple": ("multiple", 4, True, 0),
            "totals": ("totals", 1, False, 0),
        }
    )
    order = (
        "print-format wide natural target constraint annex-slots annex-name direct diagnose debug defrag "
        "help limit long xml json group-by attributes claimed data run cod gpus java absent offline merge "
        "vm slots compact nocompact server state broken lvm healthy snapshot statistics startd schedd grid "
        "subsystem multiple license storage negotiator generic any sort submitters master collector world "
        "ckptsrvr "
        "totals expert version"
    )
    return [("aaf", 3, True, "attrs"), *(by_name[name] for name in order.split())]


_STATUS_REST_25 = _rest_25()

_EMULATED_STATUS = {"slots", "startd", "direct", "af", "autoformat"}

# condor_drain's parse loop (identical option set on 9.0 and 25.x but -debug's colon form).
_DRAIN = [
    ("help", 1, False, 0),
    ("version", 1, False, 0),
    ("debug", 3, True, 0),
    ("verbose", 4, False, 0),
    ("pool", 1, False, 1),
    ("cancel", 1, False, 0),
    ("fast", 1, False, 0),
    ("quick", 1, False, 0),
    ("graceful", 1, False, 0),
    ("resume-on-completion", 1, False, 0),
    ("exit-on-completion", 2, False, 0),
    ("restart-on-completion", 4, False, 0),
    ("reconfig-on-completion", 3, False, 0),
    ("reason", 3, False, 1),
    ("request-id", 3, False, 1),
    ("check", 2, False, 1),
    ("start", 5, False, 1),
]
_EMULATED_DRAIN = {"cancel", "graceful", "quick", "reason"}


class Exit(Exception):
    def __init__(self, code: int, stderr: str = "", stdout: str = "") -> None:
        super().__init__(code)
        self.code, self.stderr, self.stdout = code, stderr, stdout


def is_arg_prefix(arg: str, name: str, minimum: int, colon: bool = False) -> tuple[bool, str | None]:
    """HTCondor's is_arg_prefix / is_arg_colon_prefix (src/condor_utils/match_prefix.cpp)."""
    suffix = None
    if colon and ":" in arg:
        arg, suffix = arg.split(":", 1)
    if not arg or not name or arg[0] != name[0]:
        return False, None
    if not name.startswith(arg):
        return False, None
    if minimum < 0:
        return arg == name, suffix
    return len(arg) >= minimum, suffix


def is_dash_arg_prefix(arg: str, name: str, minimum: int, colon: bool = False) -> tuple[bool, str | None]:
    if not arg.startswith("-"):
        return False, None
    arg = arg[1:]
    if arg.startswith("-"):
        arg, minimum = arg[1:], -1
    return is_arg_prefix(arg, name, minimum, colon)


def _major_minor(version: str) -> tuple[int, int]:
    major, minor, *_ = (int(part) for part in version.split("."))
    return major, minor


class Machine:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text())
        if self.data["version"] not in EMULATED_VERSIONS:
            raise Exit(NOT_EMULATED, f"fake HTCondor: version {self.data['version']} is not emulated\n")

    @property
    def version(self) -> tuple[int, int]:
        return _major_minor(self.data["version"])

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data))

    def locate_startd(self, tool: str, host: str) -> None:
        if host != self.data["hostname"] or not self.data.get("startd_up", True):
            raise Exit(1, f"Error: Failed to locate startd {host}\nCan't find address for startd {host}\n")


def _parse(
    table: list[tuple[str, int, bool, object]], argv: list[str], *, attrs_special: set[str]
) -> tuple[list[tuple[str, str | None, list[str]]], list[str]]:
    """Options in argv order as (name, colon suffix, arguments), and the positional arguments."""
    options: list[tuple[str, str | None, list[str]]] = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        for entry in table:
            name, minimum, colon, nargs = entry
            if name in attrs_special:  # -af: only a single dash, colon form allowed
                matched, suffix = (
                    is_arg_prefix(arg[1:], name, minimum, True) if arg.startswith("-") else (False, None)
                )
            else:
                matched, suffix = is_dash_arg_prefix(arg, name, minimum, colon)
            if matched:
                break
        else:
            if arg.startswith("-"):
                options.append(("?", None, [arg]))
            else:
                positional.append(arg)
            i += 1
            continue
        if nargs == "attrs":
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                i += 1
                values.append(argv[i])
            options.append((name, suffix, values))
        else:
            count = int(nargs)  # type: ignore[call-overload]
            values = argv[i + 1 : i + 1 + count]
            options.append((name, suffix, values if len(values) == count else [*values, None]))  # type: ignore[list-item]
            i += count
        i += 1
    return options, positional


STATUS_USAGE = "Usage: condor_status [help-opt] [query-opt] [custom-opts] [display-opts] [name ...]\n"


def condor_status(machine: Machine, argv: list[str]) -> str:
    table = _STATUS_COMMON + (_STATUS_REST_25 if machine.version >= (10, 0) else _STATUS_REST_9)
    options, positional = _parse(table, argv, attrs_special={"af", "autoformat", "aaf"})
    mode, direct, attrs = "slots", None, None
    for name, suffix, values in options:
        if name == "?":
            raise Exit(1, f"Error:  Unknown option {values[0]}\n{STATUS_USAGE}")
        if name in ("af", "autoformat"):
            if not values:
                raise Exit(
                    1,
                    f"Error: Argument -{name} requires at last one attribute parameter\n"
                    'Use "condor_status -help" for details\n',
                )
            if suffix:
                raise Exit(NOT_EMULATED, f"fake condor_status: -{name}:{suffix} is not emulated\n")
        if values and values[-1] is None:
            raise Exit(
                1,
                f'condor_status: -{name} requires another argument\nUse "condor_status -help" for details\n',
            )
        if name not in _EMULATED_STATUS:
            raise Exit(NOT_EMULATED, f"fake condor_status: -{name} is not emulated\n")
        if name in ("slots", "startd"):
            mode = name
        elif name == "direct":
            direct = values[0]
        else:
            attrs = values
    if positional:
        raise Exit(NOT_EMULATED, "fake condor_status: name arguments are not emulated\n")
    if direct is None or attrs is None:
        raise Exit(NOT_EMULATED, "fake condor_status: only -direct HOST ... -af ATTRS is emulated\n")
    for attr in attrs:
        if not attr.replace("_", "").isalnum():
            raise Exit(NOT_EMULATED, f"fake condor_status: the expression {attr!r} is not emulated\n")
    machine.locate_startd("condor_status", direct)
    if mode == "startd" and machine.version >= (24, 4):
        ads = [{"MyType": "StartD", "Name": machine.data["hostname"], "Machine": machine.data["hostname"]}]
    else:
        ads = [
            {"MyType": "Machine", "Machine": machine.data["hostname"], **slot}
            for slot in machine.data["slots"]
        ]
    lines = []
    for ad in ads:
        values = []
        for attr in attrs:
            found = {k.lower(): v for k, v in ad.items()}.get(attr.lower())
            values.append("undefined" if found is None else _format(found))
        lines.append(" ".join(values) + "\n")
    return "".join(lines)


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


DRAIN_USAGE = "Usage: condor_drain [OPTIONS] machine\n"


def condor_drain(machine: Machine, argv: list[str]) -> str:
    # The real loop: options until the first argument without a dash, which must be the last one.
    options: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        entry = next((e for e in _DRAIN if is_dash_arg_prefix(arg, e[0], e[1], e[2])[0]), None)
        if entry is None:
            raise Exit(2, f"ERROR: unexpected argument: {arg}\n")
        name, _minimum, _colon, nargs = entry
        if name == "help":
            raise Exit(1, DRAIN_USAGE)
        values = argv[i + 1 : i + 1 + int(nargs)]  # type: ignore[call-overload]
        if len(values) < int(nargs):  # type: ignore[call-overload]
            raise Exit(1, f"condor_drain: '{arg}' requires another argument\n{DRAIN_USAGE}")
        if name not in _EMULATED_DRAIN:
            raise Exit(NOT_EMULATED, f"fake condor_drain: -{name} is not emulated\n")
        options.append((name, values))
        i += 1 + len(values)
    if i != len(argv) - 1:
        raise Exit(2, "ERROR: must specify one target machine\n")
    cancel = any(name == "cancel" for name, _v in options)
    reason = next((v[0] for name, v in options if name == "reason"), None)
    if cancel and reason is not None:
        raise Exit(2, "ERROR: cannot use -reason with -cancel\n")
    target = argv[-1]
    if target != machine.data["hostname"] or not machine.data.get("startd_up", True):
        raise Exit(1, f"ERROR: Can't find address for startd {target}\n")
    if cancel:
        machine.data["draining"] = False
        machine.save()
        return f"Sent request to cancel draining on {target}\n"
    if machine.data.get("draining"):
        raise Exit(1, f"Attempt to send DRAIN_JOBS to startd {target} failed\nAlready draining\n")
    machine.data["draining"] = True
    machine.data["drain_reason"] = reason
    machine.data["drain_how"] = next(
        (n for n, _v in options if n in ("graceful", "quick", "fast")), "graceful"
    )
    machine.save()
    return f"Sent request to drain the startd {target}. This only affects the machine, not its jobs.\n"


def condor_config_val(machine: Machine, argv: list[str]) -> str:
    if any(a.startswith("-") for a in argv):
        raise Exit(NOT_EMULATED, f"fake condor_config_val: options are not emulated: {argv}\n")
    known = {"FULL_HOSTNAME": machine.data["hostname"]}
    out = []
    for name in argv:
        if name.upper() not in known:
            raise Exit(1, f"Not defined: {name}\n")
        out.append(known[name.upper()] + "\n")
    return "".join(out)


TOOLS = {"condor_status": condor_status, "condor_drain": condor_drain, "condor_config_val": condor_config_val}


def install(bin_dir: Path) -> None:
    """Put the fake tools on a PATH directory (symlinks to this script, run by this interpreter)."""
    launcher = bin_dir / "_fake_htcondor"
    launcher.write_text(
        f'#!/bin/sh\nexec {sys.executable} -S -E {Path(__file__).resolve()} "$(basename "$0")" "$@"\n'
    )
    launcher.chmod(0o755)
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(launcher)


def main(argv: list[str]) -> int:
    tool, args = argv[0], argv[1:]
    with open(os.environ["FAKE_CONDOR_LOG"], "a") as log:
        log.write(json.dumps([tool, *args]) + "\n")
    try:
        machine = Machine(Path(os.environ["FAKE_CONDOR_MACHINE"]))
        sys.stdout.write(TOOLS[tool](machine, args))
    except Exit as exc:
        sys.stdout.write(exc.stdout)
        sys.stderr.write(exc.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
