"""Every expected failure: one line that says what to do, its documented exit code, never a traceback.
The HTTP layer is scripted (no network); signing uses botocore with the fake keys from conftest."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from annex_client import commands
from annex_client.cli import main
from annex_client.transport import NetworkError

from tests.unit.client_fakes import HEALTH, Terminal, Wire, annex

REQUEST = ["request", "bio", "--count", "3", "--lease", "4h"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("annex-client: error:")]
    assert len(errors) == 1, err
    return errors[0]


# --- configuration and credentials: exit 3 -----------------------------------------------------------


def test_no_endpoint_says_how_to_configure_one(capsys):
    code, _, err = run(capsys, "list")
    assert code == 3
    assert "annex-client configure --endpoint URL" in one_error_line(err)


def test_missing_credentials_say_how_to_get_them(capsys, monkeypatch):
    Wire.install(monkeypatch).on("GET", "/annexes", (200, {"annexes": []}))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to find here
    for var in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(var, raising=False)
    code, _, err = run(capsys, "list")
    assert code == 3
    line = one_error_line(err)
    assert "no AWS credentials found" in line
    assert "aws sso login" in line


def test_an_unknown_profile_is_named(capsys, monkeypatch):
    Wire.install(monkeypatch)
    code, _, err = run(capsys, "list", "--profile", "nosuch")
    assert code == 3
    assert "the AWS profile 'nosuch' is not in your AWS config" in one_error_line(err)


@pytest.mark.parametrize(
    ("gateway_says", "we_say", "kind"),
    [
        (
            "The security token included in the request is expired",
            "your AWS session has expired",
            "ExpiredToken",
        ),
        (
            "The security token included in the request is invalid.",
            "does not recognise the access key",
            "InvalidToken",
        ),
        (
            "The request signature we calculated does not match the signature you provided. Check your AWS "
            "Secret Access Key and signing method.\n\nThe Canonical String ...",
            "secret key does not match",
            "BadSignature",
        ),
        (
            "Signature expired: 20261122T140000Z is now earlier than 20261122T141000Z "
            "(20261122T141500Z - 5 min.)",
            "clock is more than 5 minutes off",
            "ClockSkew",
        ),
        ("Credential should be scoped to a valid region. ", "wrong AWS region", "WrongRegion"),
        (
            "User: arn:aws:iam::123456789012:user/alice is not authorized to perform: execute-api:Invoke on "
            "resource: arn:aws:execute-api:eu-west-1:********9012:abc/v1/GET/annexes",
            "execute-api:Invoke",
            "NotAuthorized",
        ),
        ("Missing Authentication Token", "ends with the stage", "MissingAuthenticationToken"),
        ("Forbidden", "API Gateway refused the request (Forbidden)", "Forbidden"),
    ],
)
def test_api_gateway_403s_become_a_sentence_that_says_what_to_do(
    capsys, monkeypatch, gateway_says, we_say, kind
):
    key = "Message" if "not authorized" in gateway_says else "message"
    Wire.install(monkeypatch).on("GET", "/annexes", (403, {key: gateway_says}))
    code, out, err = run(capsys, "list", "--json")
    assert code == 3
    line = one_error_line(err)
    assert we_say in line
    assert "Canonical String" not in line
    assert json.loads(out)["error"] == kind


# --- the API refused: exit 1 ---------------------------------------------------------------------------


def test_a_4xx_is_one_line_naming_the_option(capsys, monkeypatch):
    refusal = {
        "error": "PolicyViolation",
        "message": "the lease may be at most 1d; request less and extend it later with 'annex-client extend'",
        "fields": [
            {
                "field": "lease",
                "reason": "the lease may be at most 1d; request less and extend it "
                "later with 'annex-client extend'",
            }
        ],
    }
    Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH)).on("POST", "/annexes", (422, refusal))
    code, out, err = run(capsys, *REQUEST, "--yes", "--json")
    assert code == 1
    assert one_error_line(err) == (
        "annex-client: error: --lease: the lease may be at most 1d; request less and extend it later "
        "with 'annex-client extend'"
    )
    assert json.loads(out) == refusal  # --json: the API's own error body


def test_a_validation_error_names_each_field(capsys, monkeypatch):
    refusal = {
        "error": "ValidationError",
        "message": "invalid request: name: String should match pattern",
        "fields": [{"field": "name", "reason": "String should match pattern '^[A-Za-z0-9]...'"}],
    }
    Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH)).on("POST", "/annexes", (422, refusal))
    code, _, err = run(capsys, *REQUEST, "--yes")
    assert code == 1
    assert one_error_line(err).startswith("annex-client: error: invalid request: NAME: String should match")


def test_an_unknown_name_is_refused_without_calling_the_annex_routes(capsys, monkeypatch):
    wire = Wire.install(monkeypatch).on("GET", "/annexes", (200, {"annexes": [annex("other")]}))
    code, _, err = run(capsys, "status", "bio")
    assert code == 1
    assert "you have no annex named 'bio'" in one_error_line(err)
    assert set(wire.paths()) == {"/annexes"}  # only the listings (yours, then everyone's if allowed)


def test_not_found_by_id_is_exit_1(capsys, monkeypatch):
    Wire.install(monkeypatch).on(
        "GET",
        "/annexes/ax-0123456789abcdef",
        (404, {"error": "AnnexNotFound", "message": "no annex ax-0123456789abcdef", "fields": []}),
    )
    code, _, err = run(capsys, "status", "ax-0123456789abcdef")
    assert code == 1
    assert one_error_line(err) == "annex-client: error: no annex ax-0123456789abcdef"


# --- confirmation: exit 2 without a terminal, 1 when declined -----------------------------------------


def test_request_without_a_terminal_refuses_unless_yes(capsys, monkeypatch):
    wire = Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH))
    monkeypatch.setattr("sys.stdin", Terminal.__bases__[0](""))  # a pipe, not a terminal
    code, _, err = run(capsys, *REQUEST)
    assert code == 2
    assert "pass --yes" in one_error_line(err)
    assert "about $2.14 = 3 x 4h" in err  # the summary was shown first
    assert wire.paths("POST") in ([], ["/estimates"])  # an estimate changes nothing; no annex


def test_request_asks_and_a_no_spends_nothing(capsys, monkeypatch):
    wire = Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH))
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    code, _, err = run(capsys, *REQUEST)
    assert code == 1
    assert "Request it? [y/N]" in err
    assert wire.paths("POST") in ([], ["/estimates"])  # an estimate changes nothing; no annex


def test_request_asks_and_a_yes_requests(capsys, monkeypatch):
    wire = (
        Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH)).on("POST", "/annexes", (201, annex()))
    )
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    code, out, _ = run(capsys, *REQUEST, "--tag", "project=bio")
    assert code == 0
    assert "Requested bio (ax-0123456789abcdef)" in out
    sent = wire.calls[-1].body
    assert sent["name"] == "bio"
    assert sent["count"] == 3
    assert sent["lease"] == "4h"
    assert sent["market"] == "on-demand"
    assert sent["tags"] == {"project": "bio"}
    assert sent["client_token"].startswith("annex-client-")
    assert "instance_type" not in sent  # the pool's default applies
    assert "idle_timeout" not in sent


def test_the_summary_names_the_pools_default_type_and_says_price_unknown_when_it_is(capsys, monkeypatch):
    Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH)).on("POST", "/annexes", (201, annex()))
    code, _, err = run(capsys, *REQUEST, "--yes")
    assert code == 0
    assert "3 x c7i.xlarge, on-demand" in err
    code, _, err = run(capsys, *REQUEST, "--type", "m5.large", "--idle", "15m", "--yes")
    assert code == 0
    assert "3 x m5.large" in err
    assert "price unknown" in err
    assert "no claimed slot for 15m" in err


def test_stop_without_a_terminal_refuses_unless_yes(capsys, monkeypatch):
    wire = Wire.install(monkeypatch).on("GET", "/annexes/ax-0123456789abcdef", (200, annex(state="running")))
    code, _, err = run(capsys, "stop", "ax-0123456789abcdef")
    assert code == 2
    assert "pass --yes" in one_error_line(err)
    assert wire.paths("POST") in ([], ["/estimates"])  # an estimate changes nothing; no annex


# --- network: exit 4, retries that are safe -----------------------------------------------------------


def test_an_unreachable_endpoint_is_exit_4_after_retrying(capsys, monkeypatch):
    wire = Wire.install(monkeypatch).on("GET", "/annexes", NetworkError("connection refused", sent=False))
    code, _, err = run(capsys, "list")
    assert code == 4
    line = one_error_line(err)
    assert "cannot reach the Annex endpoint https://abc123defg.execute-api.eu-west-1.amazonaws.com/v1" in line
    assert "connection refused" in line
    assert len(wire.calls) == 3


def test_a_lost_answer_to_request_is_retried_with_the_same_client_token(capsys, monkeypatch):
    wire = Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH))
    wire.on("POST", "/annexes", NetworkError("no answer in time", sent=True), (200, annex()))
    code, out, _ = run(capsys, *REQUEST, "--yes")
    assert code == 0
    posts = [c for c in wire.calls if c.method == "POST" and c.path == "/annexes"]
    assert len(posts) == 2
    assert posts[0].body == posts[1].body  # same client token: the service returns the first annex
    assert "Already requested with client token" in out


def test_each_retry_is_signed_afresh(capsys, monkeypatch):
    wire = Wire.install(monkeypatch).on(
        "GET", "/annexes", NetworkError("connection refused", sent=False), (200, {"annexes": []})
    )
    assert run(capsys, "list")[0] == 0
    assert all(
        c.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/") for c in wire.calls
    )
    assert "/eu-west-1/execute-api/aws4_request" in wire.calls[0].headers["Authorization"]


def test_extend_by_is_repeated_with_the_same_client_token_when_it_may_have_arrived(capsys, monkeypatch):
    # `by` adds to the lease: the retry is safe only because the API answers a known token with the
    # first extension instead of extending again
    extended = {"annex": annex(state="running"), "capped": False, "message": "lease now ends at ..."}
    wire = Wire.install(monkeypatch).on(
        "POST",
        "/annexes/ax-0123456789abcdef/extend",
        NetworkError("no answer in time", sent=True),
        (200, extended),
    )
    wire.on("GET", "/annexes/ax-0123456789abcdef", (200, annex(state="running"))).on(
        "GET", "/health", (200, HEALTH)
    )
    monkeypatch.setattr(commands, "_now", lambda: datetime(2026, 11, 22, 16, 0, tzinfo=UTC))
    code, _, _ = run(capsys, "extend", "ax-0123456789abcdef", "--by", "2h", "--yes")
    assert code == 0
    sent = [c.body for c in wire.calls if c.method == "POST" and c.path.endswith("/extend")]
    assert len(sent) == 2
    assert sent[0] == sent[1]
    assert sent[0]["client_token"].startswith("annex-client-")


def test_throttling_is_retried(capsys, monkeypatch):
    wire = Wire.install(monkeypatch).on(
        "GET", "/annexes", (429, {"message": "Too Many Requests"}), (200, {"annexes": []})
    )
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "No annexes" in out
    assert len(wire.calls) == 2


# --- the service failed: exit 6; waiting: exit 5; interrupted: exit 130 ---------------------------------


def test_a_server_error_is_exit_6_after_retrying_a_read(capsys, monkeypatch):
    wire = Wire.install(monkeypatch).on("GET", "/annexes", (502, {"message": "Internal server error"}))
    code, _, err = run(capsys, "list")
    assert code == 6
    assert "the Annex API failed (HTTP 502: Internal server error)" in one_error_line(err)
    assert len(wire.calls) == 3


def test_something_that_is_not_the_api_is_a_configuration_error(capsys, monkeypatch):
    Wire.install(monkeypatch).on("GET", "/annexes", (404, b"<html>Not Found</html>"))
    code, _, err = run(capsys, "list")
    assert code == 3
    assert "not the Annex API" in one_error_line(err)


def test_wait_gives_up_after_the_timeout_with_exit_5(capsys, monkeypatch):
    wire = (
        Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH)).on("POST", "/annexes", (201, annex()))
    )
    wire.on("GET", "/annexes/ax-0123456789abcdef", (200, annex(state="launching")))
    clock = iter(float(t) for t in range(0, 1000, 5))
    monkeypatch.setattr(commands, "_monotonic", lambda: next(clock))
    code, out, err = run(capsys, *REQUEST, "--yes", "--wait", "--timeout", "1m")
    assert code == 5
    assert "gave up waiting after 1m: bio is launching" in one_error_line(err)
    assert "keeps its lease" in err
    assert "] launching" in out
    polls = wire.paths("GET").count("/annexes/ax-0123456789abcdef")
    assert 2 <= polls <= 14  # polled every few seconds of (fake) time, then stopped


def test_ctrl_c_is_exit_130(capsys, monkeypatch):
    Wire.install(monkeypatch).on("GET", "/annexes", KeyboardInterrupt())
    code, _, err = run(capsys, "list")
    assert code == 130
    assert err.strip() == "annex-client: interrupted"


def test_json_errors_have_the_apis_shape(capsys):
    code, out, _ = run(capsys, "list", "--json")
    assert code == 3
    body = json.loads(out)
    assert body["error"] == "NoEndpoint"
    assert body["fields"] == []


def test_a_reader_that_goes_away_is_not_an_error(capsys, monkeypatch):
    rows = {"annexes": [annex(f"run-{i}", f"ax-{i:016x}") for i in range(3)]}
    Wire.install(monkeypatch).on("GET", "/annexes", (200, rows))

    def closed_pipe(text):
        raise BrokenPipeError

    monkeypatch.setattr("sys.stdout.write", closed_pipe)
    code = main(["list"])
    monkeypatch.undo()
    assert code == 0
    assert "Traceback" not in capsys.readouterr().err
