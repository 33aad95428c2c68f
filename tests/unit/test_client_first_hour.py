"""What trips a researcher up in the first hour: extend asking before it spends, checks before the plan,
messages that lead somewhere, a --wait that tells the truth, and a status that shows what happens next.
The HTTP layer is scripted (no network)."""

from __future__ import annotations

import io
import re
import urllib.error
from datetime import UTC, datetime

import pytest
from annex_client import commands, transport
from annex_client.cli import main
from annex_client.pricing import estimate
from annex_client.transport import NetworkError

from tests.unit.client_fakes import HEALTH, PRICES, Terminal, Wire, annex, quote_for

AX = "ax-0123456789abcdef"
NOW = datetime(2026, 11, 22, 16, 0, 0, tzinfo=UTC)  # the fake annex's lease ends 18:00
BOB = "arn:aws:iam::123456789012:user/bob"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("annex-client: error:")]
    assert len(errors) == 1, err
    return errors[0]


def instance(iid: str, *, claimed: int | None = 0, total: int | None = 4, state: str = "running", **kw):
    record = {
        "instance_id": iid,
        "instance_type": "c7i.xlarge",
        "zone": "eu-west-1a",
        "market": "on-demand",
        "state": state,
        "claimed_slots": claimed,
        "total_slots": total,
        "last_heartbeat_at": "2026-11-22T15:59:55Z" if total is not None else None,
        "idle_since": None,
        "end_reason": None,
    }
    record.update(kw)
    return record


@pytest.fixture
def pipe(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal


@pytest.fixture
def at_now(monkeypatch):
    monkeypatch.setattr(commands, "_now", lambda: NOW)


# --- names and limits are checked before the plan and the prompt --------------------------------------


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("bio run", "it contains a space"),
        ("bio/7", "it contains '/'"),
        ("_bio", "it starts with '_'"),
        ("b" * 64, "it is 64 characters long"),
    ],
)
def test_a_bad_name_is_refused_plainly_before_anything_is_asked(capsys, monkeypatch, name, said):
    wire = Wire.install(monkeypatch)
    code, _, err = run(capsys, "request", name, "--count", "1", "--lease", "4h", "--yes")
    assert code == 2
    line = error_line(err)
    assert said in line
    assert "letters, digits, '.', '_' and '-'" in line
    assert "at most 63 characters" in line
    assert "^[A-Za-z0-9]" not in line  # not the raw pattern
    assert wire.calls == []  # nothing asked of the API, no plan shown
    assert "Request annex" not in err


def test_a_name_that_looks_like_an_id_is_refused(capsys, monkeypatch):
    wire = Wire.install(monkeypatch)
    code, _, err = run(capsys, "request", "ax-00112233aabbccdd", "--count", "1", "--lease", "4h", "--yes")
    assert code == 2
    assert "looks like an annex id" in error_line(err)
    assert wire.calls == []


def test_a_63_character_name_is_accepted(capsys, monkeypatch):
    wire = (
        Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH)).on("POST", "/annexes", (201, annex()))
    )
    code, _, _ = run(capsys, "request", "a" * 63, "--count", "1", "--lease", "4h", "--yes")
    assert code == 0
    assert wire.calls[-1].body["name"] == "a" * 63


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--count", "11"], "error: --count: at most 10 instances per annex; ask for fewer"),
        (["--count", "1", "--type", "m6i.large"], "error: --type: instance type 'm6i.large' is not allowed"),
        (["--count", "1", "--lease", "5m"], "error: --lease: the lease must be at least 10m"),
        (["--count", "1", "--lease", "2d"], "error: --lease: the lease may be at most 1d"),
        (["--count", "1", "--idle", "1m"], "error: --idle: the idle timeout must be at least 5m"),
        (
            ["--count", "1", "--lease", "15m"],
            "error: --idle: the idle timeout must not be longer than the lease",
        ),
    ],
)
def test_limits_from_health_are_checked_before_the_plan(capsys, monkeypatch, extra, said):
    wire = Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH))
    args = ["request", "bio", *extra]
    if "--lease" not in extra:
        args += ["--lease", "4h"]
    code, _, err = run(capsys, *args, "--yes")
    assert code == 1
    assert said in error_line(err)
    assert "Request annex" not in err  # refused before the plan
    assert wire.paths("POST") == []


# --- extend shows its plan and asks ---------------------------------------------------------------------


def running_annex(**kw):
    return annex(
        state="running",
        launched_count=3,
        instances=[
            instance("i-1", claimed=2),
            instance("i-2", claimed=1),
            instance("i-3", state="terminated"),
        ],
        history=[],
        **kw,
    )


def test_extend_shows_what_it_adds_and_refuses_without_a_terminal(capsys, monkeypatch, pipe, at_now):
    wire = Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, running_annex()))
    wire.on("GET", "/health", (200, HEALTH))
    # the API's quote: two live instances at the price it holds, for two more hours
    quote = {**quote_for({"request": {"count": 2}}), "adds_usd": f"{2 * 2 * float(PRICES['c7i.xlarge']):.2f}"}
    wire.on("POST", "/estimates", (200, quote))
    code, _, err = run(capsys, "extend", AX, "--by", "2h")
    assert code == 2
    assert "pass --yes" in error_line(err)
    assert wire.paths("POST") == ["/estimates"]  # nothing extended
    # the plan: two live instances for two more hours
    assert "+2h" in err
    assert "up to 4 more instance-hours (2 live instances)" in err
    assert f"${2 * 2 * float(PRICES['c7i.xlarge']):,.2f} more" in err


def test_extend_asks_and_a_yes_extends(capsys, monkeypatch, at_now):
    result = {"annex": running_annex(lease_expires_at="2026-11-22T20:00:00Z"), "capped": False, "message": ""}
    wire = Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, running_annex()))
    wire.on("GET", "/health", (200, HEALTH)).on("POST", f"/annexes/{AX}/extend", (200, result))
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    code, out, err = run(capsys, "extend", AX, "--by", "2h")
    assert code == 0
    assert "Extend it? [y/N]" in err
    sent = wire.calls[-1].body
    assert sent["by"] == "2h"
    assert sent["client_token"].startswith("annex-client-")  # a retry after a lost answer extends once
    assert "now ends" in out


def test_extend_of_an_ended_annex_is_refused_without_asking(capsys, monkeypatch, pipe, at_now):
    ended = annex(state="ended", end_reason="stopped", instances=[], history=[])
    wire = Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, ended))
    code, _, err = run(capsys, "extend", AX, "--by", "2h", "--yes")
    assert code == 1
    assert "cannot be extended" in error_line(err)
    assert wire.paths("POST") == []


# --- messages that lead somewhere -----------------------------------------------------------------------


def test_a_negative_duration_says_it_is_negative(capsys, monkeypatch):
    Wire.install(monkeypatch)
    code, _, err = run(capsys, "extend", AX, "--by", "-2h")
    assert code == 2
    assert "'-2h' is negative" in err
    assert "expected one argument" not in err


def test_a_bare_number_of_seconds_is_read_back_as_what_it_would_be(capsys, monkeypatch):
    Wire.install(monkeypatch)
    code, _, err = run(capsys, "request", "bio", "--count", "1", "--lease", "3600")
    assert code == 2
    assert "3600s is 1h" in err
    assert "3600h" not in err


def test_an_unknown_profile_from_the_environment_is_named(capsys, monkeypatch):
    Wire.install(monkeypatch)
    monkeypatch.setenv("AWS_PROFILE", "nosuch")
    code, _, err = run(capsys, "list")
    assert code == 3
    line = error_line(err)
    assert "'nosuch' (from AWS_PROFILE)" in line
    assert "None" not in line


def test_check_setup_does_not_promise_a_default_lease_that_request_does_not_apply(capsys, monkeypatch):
    Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH))
    # the lease line must agree with `request`, which requires --lease
    _code, out, _ = run(capsys, "check-setup")
    lease = next(line for line in out.splitlines() if line.strip().startswith("lease"))
    assert "by default" not in lease
    assert "--lease" in lease


def test_an_administrator_using_another_owners_name_is_told_the_id(capsys, monkeypatch):
    theirs = annex("bio", AX, state="running", owner=BOB)
    wire = Wire.install(monkeypatch)
    wire.on("GET", "/annexes", (200, {"annexes": [], "next_token": None}), (200, {"annexes": [theirs]}))
    code, _, err = run(capsys, "status", "bio")
    assert code == 1
    line = error_line(err)
    assert AX in line
    assert "use the id" in line
    assert any("scope=all" in c.query for c in wire.calls)


def test_a_non_administrator_is_not_told_about_other_owners(capsys, monkeypatch):
    wire = Wire.install(monkeypatch)
    forbidden = (403, {"error": "Forbidden", "message": "administrators only", "fields": []})
    wire.on("GET", "/annexes", (200, {"annexes": [], "next_token": None}), forbidden)
    code, _, err = run(capsys, "status", "bio")
    assert code == 1
    assert "you have no annex named 'bio'; 'annex-client list' shows yours" in error_line(err)


# --- --wait tells the truth ---------------------------------------------------------------------------


REQUEST = ["request", "bio", "--count", "1", "--lease", "4h", "--yes", "--wait"]


def requested_then(monkeypatch, *answers):
    wire = Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH))
    wire.on("POST", "/annexes", (201, annex(count=1)))
    wire.on("GET", f"/annexes/{AX}", *answers)
    return wire


def test_an_idle_instance_is_not_reported_as_running_jobs(capsys, monkeypatch):
    joined = annex(count=1, state="running", launched_count=1, instances=[instance("i-1", claimed=0)])
    requested_then(monkeypatch, (200, joined))
    code, out, _ = run(capsys, *REQUEST)
    assert code == 0
    ready = out.splitlines()[-1]
    assert ready.startswith("Ready: 1 of 1 instances joined the pool, idle; the lease ends ")
    assert "running jobs" not in out


def test_busy_instances_are_reported_busy(capsys, monkeypatch):
    joined = annex(
        count=2, state="running", launched_count=2, instances=[instance("a", claimed=4), instance("b")]
    )
    requested_then(monkeypatch, (200, joined))
    code, out, _ = run(capsys, *REQUEST)
    assert code == 0
    assert "2 of 2 instances joined the pool, 1 busy, 1 idle" in out


def test_wait_keeps_polling_through_transient_network_errors(capsys, monkeypatch):
    joined = annex(count=1, state="running", launched_count=1, instances=[instance("i-1", claimed=1)])
    blip = NetworkError("no answer in time", sent=True)
    wire = requested_then(monkeypatch, blip, blip, blip, blip, (200, joined))
    code, out, _ = run(capsys, *REQUEST)
    assert code == 0
    assert "still trying" in out
    assert "joined the pool, busy" in out
    assert wire.paths("GET").count(f"/annexes/{AX}") >= 2


def test_wait_gives_up_on_a_lasting_outage_saying_the_lease_holds(capsys, monkeypatch):
    down = NetworkError("no answer in time", sent=True)
    requested_then(monkeypatch, down)
    clock = iter(float(t) for t in range(0, 10_000, 5))
    monkeypatch.setattr(commands, "_monotonic", lambda: next(clock))
    code, _, err = run(capsys, *REQUEST, "--timeout", "10m")
    assert code == 4
    line = error_line(err)
    assert "keeps its lease until 2026-11-22 18:00:00" in line
    assert "annex-client status bio --watch" in line


def test_wait_timeout_says_until_when_the_lease_holds_and_why_instances_may_be_silent(capsys, monkeypatch):
    silent = annex(count=1, state="running", launched_count=1, instances=[instance("i-1", total=None)])
    requested_then(monkeypatch, (200, silent))
    clock = iter(float(t) for t in range(0, 1000, 5))
    monkeypatch.setattr(commands, "_monotonic", lambda: next(clock))
    code, _, err = run(capsys, *REQUEST, "--timeout", "1m")
    assert code == 5
    line = error_line(err)
    assert "0 joined the pool" in line
    assert "keeps its lease until 2026-11-22 18:00:00" in line
    assert "pool token" in line
    assert "central manager" in line


def test_a_refused_connection_is_not_retried_with_backoff(monkeypatch):
    slept: list[float] = []

    class Refusing:
        def open(self, request, timeout):
            raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(transport, "_opener", Refusing())
    signer = transport.Signer(profile=None, region="eu-west-1")
    t = transport.Transport("http://127.0.0.1:9/v1", signer, sleep=slept.append)
    with pytest.raises(transport.Unreachable, match="connection refused"):
        t.call("GET", "/health")
    assert slept == []


# --- status shows what happens next ----------------------------------------------------------------------


def test_an_ended_annex_has_no_over_on_its_unused_lease(capsys, monkeypatch, at_now):
    ended = annex(
        state="ended", end_reason="stopped", ended_at="2026-11-22T15:00:00Z", instances=[], history=[]
    )
    Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, ended))
    code, out, _ = run(capsys, "status", AX)
    assert code == 0
    lease = next(line for line in out.splitlines() if line.strip().startswith("lease"))
    assert "(over)" not in lease
    assert "unused" in lease


def test_status_watch_follows_until_the_annex_ends(capsys, monkeypatch, at_now):
    live = running_annex()
    ended = annex(state="ended", end_reason="lease expired", instances=[], history=[])
    wire = Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, live), (200, live), (200, ended))
    code, out, _ = run(capsys, "status", AX, "--watch", "--every", "5s")
    assert code == 0
    assert wire.paths("GET").count(f"/annexes/{AX}") == 3
    assert len(re.findall(r"^Annex bio", out, re.MULTILINE)) == 3
    assert "ended (lease expired)" in out.split("Annex bio")[-1]


def test_status_says_why_instances_may_have_ended_silent(capsys, monkeypatch, at_now):
    gone = instance("i-1", total=None, state="terminated", end_reason="silent")
    ended = annex(state="ended", end_reason="all-instances-gone", instances=[gone], history=[])
    Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, ended))
    code, out, _ = run(capsys, "status", AX)
    assert code == 0
    assert "1 instance(s) ended silent" in out
    assert "pool token" in out
    assert "central manager" in out


def test_wait_that_sees_the_annex_end_silent_says_the_usual_causes(capsys, monkeypatch):
    gone = instance("i-1", total=None, state="terminated", end_reason="silent")
    ended = annex(count=1, state="ended", end_reason="all-instances-gone", instances=[gone])
    requested_then(monkeypatch, (200, ended))
    code, _, err = run(capsys, *REQUEST)
    assert code == 1
    line = error_line(err)
    assert "before it was ready" in line
    assert "pool token" in line


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(4 * 3600, "4h"), (5400, "1.5h"), (1800, "30m"), (12_120, "3h22m"), (12_179, "3h22m")],
)
def test_cost_lines_show_lengths_as_people_write_them(seconds, shown):
    quote = {"adds_usd": f"{10 * 0.1785 * seconds / 3600:.2f}", "price": {"usd_per_hour": "0.1785"}}
    text = estimate(quote, 10, seconds / 3600, spot=False).text()
    assert f"= 10 x {shown} x $" in text
