"""The real annex-client against the local gateway on 127.0.0.1: real HTTP, real SigV4 signatures checked
by botocore's own canonicalization, the request function behind it, moto in process."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from annex.core.clock import parse_time, to_iso
from annex.core.models import AnnexState, Instance, InstanceState, Market
from annex.store import AnnexStore, InstanceKey
from annex_client import commands, transport
from annex_client.cli import main
from annex_local.sigv4 import sign_headers

from tests.integration.conftest import ADMIN, ALICE, BOB, KEYS, TABLE, instance_states, run_tagged_instances

pytestmark = pytest.mark.usefixtures("gateway", "aws_profiles")


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(commands, "_sleep", lambda seconds: None)


def run(capsys, *argv: str, profile: str | None = "alice") -> tuple[int, str, str]:
    code = main([*argv, *(["--profile", profile] if profile else [])])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("annex-client: error:")]
    assert len(lines) == 1, err
    return lines[0]


def meta_items(ddb) -> list[dict]:
    items = ddb.scan(TableName=TABLE)["Items"]
    return [i for i in items if i["sk"]["S"] == "META"]


def request(capsys, name: str = "bio", *extra: str, profile: str = "alice") -> dict:
    code, out, err = run(
        capsys, "request", name, "--count", "2", "--lease", "4h", "--yes", "--json", *extra, profile=profile
    )
    assert code == 0, err
    return json.loads(out)


# --- every command round-trips -----------------------------------------------------------------------


def test_request_list_status_extend_stop(capsys, ddb, ec2):
    code, out, err = run(
        capsys,
        "request",
        "bio",
        "--count",
        "2",
        "--lease",
        "4h",
        "--idle",
        "15m",
        "--tag",
        "project=bio",
        "--yes",
    )
    assert code == 0, err
    assert "2 x c7i.xlarge, on-demand" in err  # the summary came first
    (item,) = meta_items(ddb)
    annex_id = item["id"]["S"]
    assert f"Requested bio ({annex_id}): requested." in out
    assert item["owner"]["S"] == ALICE
    assert item["count"]["N"] == "2"
    assert item["idle_timeout_seconds"]["N"] == "900"
    assert item["tags"]["M"] == {"project": {"S": "bio"}}

    code, out, _ = run(capsys, "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["NAME", "ID", "STATE", "INSTANCES"]
    assert row.split()[:6] == ["bio", annex_id, "requested", "0/2", "c7i.xlarge", "on-demand"]

    code, out, _ = run(capsys, "status", "bio")
    assert code == 0
    assert f"Annex bio ({annex_id})" in out
    assert f"owner      {ALICE}" in out
    assert "No instances yet." in out
    assert "alice  requested" in out

    before = parse_time(item["lease_expires_at"]["S"])
    code, out, _ = run(capsys, "extend", "bio", "--by", "2h", "--json", "--yes")
    assert code == 0
    assert parse_time(json.loads(out)["annex"]["lease_expires_at"]) == before + timedelta(hours=2)

    until = before + timedelta(hours=3)
    code, out, _ = run(capsys, "extend", annex_id, "--until", to_iso(until), "--yes")
    assert code == 0
    assert out.startswith("The lease of bio now ends ")
    (item,) = meta_items(ddb)
    assert parse_time(item["lease_expires_at"]["S"]) == until

    instance_ids = run_tagged_instances(ec2, annex_id, 2)
    code, out, _ = run(capsys, "stop", "bio", "--yes", "--reason", "done early")
    assert code == 0
    assert out.startswith(f"Stopped bio ({annex_id}): ended (stopped)")
    assert set(instance_states(ec2, instance_ids).values()) <= {"shutting-down", "terminated"}

    code, out, _ = run(capsys, "status", "bio", "--json")
    detail = json.loads(out)
    assert (detail["state"], detail["end_reason"]) == ("ended", "stopped")
    assert any(e["detail"] == "done early" for e in detail["history"])

    code, out, _ = run(capsys, "stop", "bio", "--yes")
    assert code == 0
    assert "has already ended (stopped); nothing to stop" in out


def test_json_forms_print_the_apis_json(capsys):
    created = request(capsys)
    outputs = {}
    for name, argv in {
        "list": ["list", "--json"],
        "status": ["--json", "status", created["id"]],
        "status without NAME": ["status", "--json"],
        "extend": ["extend", "bio", "--by", "1h", "--json", "--yes"],
        "stop": ["stop", "bio", "--yes", "--json"],
    }.items():
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        outputs[name] = json.loads(out)
    assert [a["id"] for a in outputs["list"]["annexes"]] == [created["id"]]
    assert outputs["status"]["id"] == created["id"]
    assert outputs["status without NAME"]["annexes"][0]["name"] == "bio"
    assert outputs["extend"]["capped"] is False
    assert outputs["stop"]["state"] == "ended"


def test_a_name_resolves_to_the_live_annex_else_the_newest(capsys):
    first = request(capsys)
    assert run(capsys, "stop", "bio", "--yes")[0] == 0
    time.sleep(1.05)  # creation times have one-second resolution; "newest" needs them apart
    second = request(capsys)
    _, out, _ = run(capsys, "status", "bio", "--json")
    assert json.loads(out)["id"] == second["id"]  # the live one, not the ended one
    assert run(capsys, "stop", "bio", "--yes")[0] == 0
    _, out, _ = run(capsys, "status", "bio", "--json")
    assert json.loads(out)["id"] == second["id"] != first["id"]


def test_check_setup_reports_the_caller_limits_and_the_fail_safe(capsys, ddb):
    code, out, err = run(capsys, "check-setup")
    assert code == 1
    assert f"you are      {ALICE}" in out
    assert "at most 10 instances" in out  # the policy the integration tier runs with
    assert "lease-check  NEVER RAN" in out
    assert (
        error_line(err)
        == "annex-client: error: check-setup found 2 problem(s): lease-check never ran; idle-reap never ran"
    )

    store = AnnexStore(ddb, TABLE)
    now = datetime.now(UTC).replace(microsecond=0)
    store.record_sweep("lease-check", now=now - timedelta(seconds=30))
    store.record_sweep("idle-reap", now=now - timedelta(hours=1))
    code, out, err = run(capsys, "check-setup")
    assert code == 1
    assert "lease-check  ok, last succeeded 3" in out
    assert "idle-reap    STALE: last succeeded 1h ago" in out

    store.record_sweep("idle-reap", now=now)
    code, out, _ = run(capsys, "check-setup", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["problems"] == []
    assert report["health"]["caller"] == ALICE
    assert report["credentials"]["method"] == "shared-credentials-file"
    assert report["credentials"]["access_key"] == "AKIA...0001"


def test_administrators_see_every_annex_and_others_see_only_their_own(capsys):
    alices = request(capsys, "bio")
    request(capsys, "chem", profile="bob")
    code, out, _ = run(capsys, "list", "--all", profile="admin")  # a role session with a session token
    assert code == 0
    table = out.split("\n\n")[0]  # the per-owner totals follow after a blank line
    owners = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:]}
    assert owners == {"bio": "alice", "chem": "bob"}

    code, _, err = run(capsys, "list", "--all", profile="bob")
    assert code == 1
    assert "only pool administrators" in error_line(err)
    code, _, err = run(capsys, "stop", alices["id"], "--yes", profile="bob")
    assert code == 1
    assert error_line(err) == f"annex-client: error: no annex {alices['id']}"
    code, out, _ = run(capsys, "status", alices["id"], "--json", profile="admin")
    assert json.loads(out)["owner"] == ALICE


# --- refusals and failures -----------------------------------------------------------------------------


def test_a_4xx_is_one_clear_line_with_exit_1_and_nothing_changes(capsys, ddb):
    code, _, err = run(capsys, "request", "bio", "--count", "11", "--lease", "4h", "--yes")
    assert code == 1
    assert error_line(err) == (
        "annex-client: error: --count: at most 10 instances per annex; ask for fewer or split the work "
        "across annexes"
    )
    request(capsys)
    code, _, err = run(capsys, "request", "bio", "--count", "1", "--lease", "4h", "--yes")
    assert code == 1
    assert error_line(err).startswith("annex-client: error: NAME: you already have a live annex named 'bio'")
    assert len(meta_items(ddb)) == 1


def test_an_unreachable_endpoint_says_so_with_exit_4(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    code, _, err = run(capsys, "list", "--endpoint", f"http://127.0.0.1:{port}/v1")
    assert code == 4
    assert error_line(err) == (
        f"annex-client: error: cannot reach the Annex endpoint http://127.0.0.1:{port}/v1: "
        "connection refused (nothing listens there); check the URL ('annex-client configure'), "
        "your network or VPN"
    )


def test_a_retry_after_a_lost_answer_returns_the_same_annex(capsys, ddb, monkeypatch):
    real_send = transport.send
    lost = []

    def lose_first_create_answer(method, url, headers, body, timeout):
        answer = real_send(method, url, headers, body, timeout)
        if method == "POST" and url.endswith("/annexes") and not lost:  # not the estimate before it
            lost.append(answer)
            raise transport.NetworkError("no answer in time", sent=True)
        return answer

    monkeypatch.setattr(transport, "send", lose_first_create_answer)
    code, out, _ = run(capsys, "request", "bio", "--count", "2", "--lease", "4h", "--yes")
    assert code == 0
    assert lost[0][0] == 201  # the first attempt did create it
    assert "Already requested with client token annex-client-" in out
    assert len(meta_items(ddb)) == 1


def test_wait_follows_the_annex_until_its_instances_heartbeat(capsys, ddb, monkeypatch):
    store = AnnexStore(ddb, TABLE)
    now = datetime.now(UTC).replace(microsecond=0)
    ids = ["i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"]

    def instance(iid: str, **extra) -> Instance:
        return Instance(
            instance_id=iid,
            annex_id=annex_id(),
            instance_type="c7i.xlarge",
            market=Market.ON_DEMAND,
            state=InstanceState.RUNNING,
            launched_at=now,
            **extra,
        )

    def annex_id() -> str:
        return meta_items(ddb)[0]["id"]["S"]

    def launching():
        store.set_state(
            annex_id(),
            expected=[AnnexState.REQUESTED],
            new_state=AnnexState.LAUNCHING,
            now=now,
            actor="launch",
        )

    def running():
        store.set_state(
            annex_id(),
            expected=[AnnexState.LAUNCHING],
            new_state=AnnexState.RUNNING,
            now=now,
            actor="launch",
            launched_count=2,
        )
        store.put_instances([instance(i) for i in ids], reap_at=now + timedelta(minutes=15))

    def heartbeat(iid: str):
        key = InstanceKey(annex_id(), iid)
        record = store.get_instance(key)
        assert record is not None
        store.apply_heartbeat(
            key, now=now, claimed_slots=0, total_slots=4, idle_since=None, due_at=now, seen=record.heartbeat
        )

    steps = [launching, running, lambda: heartbeat(ids[0]), lambda: heartbeat(ids[1])]
    monkeypatch.setattr(commands, "_sleep", lambda seconds: steps.pop(0)() if steps else None)
    code, out, err = run(capsys, "request", "bio", "--count", "2", "--lease", "4h", "--yes", "--wait")
    assert code == 0, err
    progress = [line.split("] ", 1)[1] for line in out.splitlines() if "] " in line]
    assert progress == [
        "requested",
        "launching",
        "running: 2 of 2 instances launched, 0 joined the pool",
        "running: 2 of 2 instances launched, 1 joined the pool",
        "2 of 2 instances joined the pool, idle",  # no slot claimed: not "running jobs"
    ]
    assert out.splitlines()[-1].startswith("Ready: 2 of 2 instances joined the pool, idle; the lease ends ")


def test_wait_times_out_with_exit_5(capsys, monkeypatch):
    clock = iter(float(t) for t in range(0, 10_000, 5))
    monkeypatch.setattr(commands, "_monotonic", lambda: next(clock))
    code, _out, err = run(
        capsys, "request", "bio", "--count", "2", "--lease", "4h", "--yes", "--wait", "--timeout", "30s"
    )
    assert code == 5
    assert "gave up waiting after 30s: bio is requested" in error_line(err)


# --- signatures: what the gateway refuses ---------------------------------------------------------------


def test_a_wrong_secret_is_refused_and_the_client_says_what_to_do(capsys, aws_profiles):
    key = KEYS["alice"][0]
    with aws_profiles.open("a") as fh:
        fh.write(f"[mallory]\naws_access_key_id = {key}\naws_secret_access_key = guessed\n")
    code, _, err = run(capsys, "list", profile="mallory")
    assert code == 3
    assert "the API rejected the request signature: your secret key does not match" in error_line(err)


def test_an_unknown_access_key_is_refused(capsys):
    code, _, err = run(capsys, "list", profile=None)  # the environment's fake keys
    assert code == 3
    assert "AWS does not recognise the access key you signed with" in error_line(err)


def test_a_clock_more_than_5_minutes_off_is_refused(capsys):
    late = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=10)
    with mock.patch("botocore.auth.get_current_datetime", return_value=late):
        code, _, err = run(capsys, "list")
    assert code == 3
    assert "your computer's clock is more than 5 minutes off" in error_line(err)


def raw(gateway, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        gateway.url + path, data=body or None, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def alice_signs(gateway, method: str, path: str, body: bytes = b"", **kwargs) -> dict:
    key, secret, _ = KEYS["alice"]
    headers = {"Content-Type": "application/json"} if body else {}
    return sign_headers(
        method,
        gateway.url + path,
        access_key=key,
        secret_key=secret,
        region="us-east-1",
        body=body,
        headers=headers,
        **kwargs,
    )


def test_an_unsigned_request_is_refused(gateway):
    assert raw(gateway, "GET", "/health") == (403, {"message": "Missing Authentication Token"})
    assert (
        raw(gateway, "POST", "/annexes", b'{"name":"x","count":1}', {"Content-Type": "application/json"})[0]
        == 403
    )


def test_a_changed_body_is_refused_and_nothing_is_created(gateway, ddb):
    signed_for = json.dumps({"name": "bio", "count": 1, "lease": "1h"}).encode()
    sent = json.dumps({"name": "bio", "count": 9, "lease": "1h"}).encode()
    status, body = raw(
        gateway, "POST", "/annexes", sent, alice_signs(gateway, "POST", "/annexes", signed_for)
    )
    assert status == 403
    assert body["message"].startswith("The request signature we calculated does not match")
    assert meta_items(ddb) == []
    status, _ = raw(
        gateway, "POST", "/annexes", signed_for, alice_signs(gateway, "POST", "/annexes", signed_for)
    )
    assert status == 201  # the same request, unchanged, is accepted


def test_a_stale_date_and_a_wrong_secret_are_refused(gateway):
    late = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=6)
    with mock.patch("botocore.auth.get_current_datetime", return_value=late):
        stale = alice_signs(gateway, "GET", "/health")
    status, body = raw(gateway, "GET", "/health", headers=stale)
    assert status == 403
    assert body["message"].startswith("Signature expired")
    wrong = sign_headers(
        "GET", gateway.url + "/health", access_key=KEYS["alice"][0], secret_key="nope", region="us-east-1"
    )
    assert raw(gateway, "GET", "/health", headers=wrong)[0] == 403
    assert raw(gateway, "GET", "/health", headers=alice_signs(gateway, "GET", "/health"))[0] == 200


AWSCURL = Path(sys.executable).with_name("awscurl")


@pytest.mark.skipif(not AWSCURL.exists() and not shutil.which("awscurl"), reason="awscurl is not installed")
def test_a_third_party_signer_is_accepted(gateway, ddb):
    """awscurl computes SigV4 with its own code (not botocore's signer), and signs x-amz-content-sha256."""
    exe = str(AWSCURL) if AWSCURL.exists() else str(shutil.which("awscurl"))
    key, secret, _ = KEYS["bob"]

    def awscurl(*args: str, secret: str = secret) -> subprocess.CompletedProcess[str]:
        signing = [
            "--service",
            "execute-api",
            "--region",
            "us-east-1",
            "--access_key",
            key,
            "--secret_key",
            secret,
        ]
        return subprocess.run([exe, *signing, *args], capture_output=True, text=True, timeout=60, check=False)

    health = awscurl(gateway.url + "/health")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["caller"] == BOB
    body = json.dumps({"name": "from-awscurl", "count": 1, "lease": "1h"})
    created = awscurl(
        "-X", "POST", "-H", "Content-Type: application/json", "-d", body, gateway.url + "/annexes"
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["owner"] == BOB
    assert [i["name"]["S"] for i in meta_items(ddb)] == ["from-awscurl"]
    bad = awscurl(gateway.url + "/health", secret="wrong")
    assert "signature we calculated does not match" in bad.stdout + bad.stderr


def test_the_admin_identity_is_a_role_session(identities):
    assert identities[KEYS["admin"][0]].arn == ADMIN
    assert identities[KEYS["admin"][0]].session_token == KEYS["admin"][2]
