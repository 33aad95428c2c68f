"""Argument parsing: what a researcher types, and what they are told when it is wrong."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from annex_client.cli import build_parser, main
from annex_client.errors import EXIT_CODES


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_request_reads_every_option():
    args = parse(
        "request",
        "bio-run-7",
        "--count",
        "10",
        "--type",
        "c7i.2xlarge",
        "--spot",
        "--lease",
        "4h",
        "--idle",
        "15m",
        "--tag",
        "project=bio",
        "--tag",
        "grant = NSF-1",
        "--wait",
        "--timeout",
        "20m",
        "--yes",
        "--client-token",
        "retry-1",
    )
    assert args.name == "bio-run-7"
    assert args.count == 10
    assert args.type == "c7i.2xlarge"
    assert args.spot is True
    assert args.lease == timedelta(hours=4)
    assert args.idle == timedelta(minutes=15)
    assert args.tag == [("project", "bio"), ("grant", "NSF-1")]
    assert args.wait is True
    assert args.timeout == timedelta(minutes=20)
    assert args.yes is True
    assert args.client_token == "retry-1"


def test_request_defaults_ask_first_and_wait_fifteen_minutes():
    args = parse("request", "bio", "--count", "1", "--lease", "90m")
    assert (args.yes, args.wait, args.spot, args.type, args.idle) == (False, False, False, None, None)
    assert args.timeout == timedelta(minutes=15)


def test_shared_options_work_before_and_after_the_command():
    before = parse("--json", "--endpoint", "https://x.example/v1", "--profile", "p", "--region", "r", "list")
    after = parse("list", "--json", "--endpoint", "https://x.example/v1", "--profile", "p", "--region", "r")
    for args in (before, after):
        assert (args.json, args.endpoint, args.profile, args.region) == (
            True,
            "https://x.example/v1",
            "p",
            "r",
        )


def test_extend_takes_a_duration_or_a_time():
    assert parse("extend", "bio", "--by", "2h").by == timedelta(hours=2)
    assert parse("extend", "bio", "--until", "2026-11-22T18:00:00Z").until == datetime(
        2026, 11, 22, 18, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["request", "bio", "--count", "3", "--lease", "4"], "'4' needs a unit: 4h, 4m or 4d"),
        (["request", "bio", "--count", "0", "--lease", "4h"], "not a whole number of instances"),
        (["request", "bio", "--count", "3"], "the following arguments are required: --lease"),
        (["request", "bio", "--lease", "4h"], "the following arguments are required: --count"),
        (["request", "bio", "--count", "3", "--lease", "4h", "--tag", "novalue"], "write it as key=value"),
        (["extend", "bio"], "one of the arguments --by --until is required"),
        (["extend", "bio", "--by", "2h", "--until", "2026-11-22T18:00Z"], "not allowed with argument"),
        (["extend", "bio", "--until", "teatime"], "is not a time"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2_and_say_what_is_wrong(capsys, argv, says):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "request" in capsys.readouterr().err


def test_help_lists_every_command_and_every_exit_code(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("request", "extend", "stop", "status", "list", "check-setup", "configure"):
        assert command in out
    for code, meaning in EXIT_CODES:
        assert f"{code:>3}  {meaning}" in out
    assert "ANNEX_ENDPOINT" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("annex-client 0.")


def test_help_does_not_import_botocore():
    """`annex-client --help` must start fast: botocore is imported only when a request is signed."""
    code = (
        "import sys, io, contextlib\n"
        "from annex_client.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['request', '--help'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'urllib3')\n"
        "               or m in ('annex_client.commands', 'annex_client.transport'))\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0 []"
