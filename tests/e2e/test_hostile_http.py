"""The hostile-input corpus over real HTTP: `annex-local up` as a process, every request signed with
botocore's SigV4 signer over exactly the bytes and the request target that go on the wire (http.client,
which sends a path as given, where requests would re-encode and normalize it after signing).

Each answer is a 4xx: the functions' documented `{"error", "message", "fields"}`, or API Gateway's own
refusal where real API Gateway answers before any function. The table and the embedded EC2 are
byte-for-byte unchanged afterwards (the fail-safe sweeps' own status items aside: they are written
every sweep period whatever the API does)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.e2e.conftest import RunningStack, start_stack, stop_stack, wait_for
from tests.integration.test_hostile_requests import (
    BODY,
    Case,
    body_attacks,
    create_cases,
    extend_cases,
    heartbeat_cases,
    stop_cases,
)

ERROR_KEYS = {"error", "message", "fields"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


class Wire:
    """Signs and sends exactly the target and bytes given."""

    def __init__(self, stack: RunningStack, profile: str = "alice") -> None:
        self.stack = stack
        creds = stack.credentials(profile)
        self.key, self.secret = creds["aws_access_key_id"], creds["aws_secret_access_key"]
        self.token = creds.get("aws_session_token")
        url = urlsplit(stack.api)
        self.host, self.port, self.stage = url.hostname or "", url.port or 80, url.path

    def send(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        *,
        stage: str | None = None,
    ) -> Answer:
        """`target` is the path under the stage, with its query, exactly as it goes on the wire."""
        full = (self.stage if stage is None else stage) + target
        extra = headers if headers is not None else ([("Content-Type", "application/json")] if body else [])
        request = AWSRequest(method=method, url=f"http://{self.host}:{self.port}{full}", data=body or None)
        for name, value in extra:  # a repeated header is signed with all its values, as SigV4 says
            request.headers[name] = value  # (HTTPHeaders appends)
        SigV4Auth(Credentials(self.key, self.secret, self.token), "execute-api", "us-east-1").add_auth(
            request
        )
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.putrequest(method, full, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", f"{self.host}:{self.port}")
            for name, value in request.headers.items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            raw = resp.read()
            headers_back = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Answer(resp.status, headers_back, parsed)


def documented(answer: Answer, expected: int | None) -> str | None:
    if expected is not None and answer.status != expected:
        return f"status {answer.status}, expected {expected}: {str(answer.body)[:300]}"
    if not 400 <= answer.status < 500:
        return f"status {answer.status} is not a 4xx: {str(answer.body)[:300]}"
    if "x-amzn-errortype" in answer.headers:
        kind = answer.headers["x-amzn-errortype"]
        return f"API Gateway's own refusal ({kind}), not the function's: {answer.body}"
    body = answer.body
    if not isinstance(body, dict) or set(body) != ERROR_KEYS:
        return f"not the documented error body: {str(body)[:300]}"
    if not all(set(f) == {"field", "reason"} and f["reason"] for f in body["fields"]):
        return f"fields malformed: {body}"
    return None


def encoded(case: Case) -> bytes:
    if case.body is None:
        return b""
    text = case.body if isinstance(case.body, str) else json.dumps(case.body)
    # Over HTTP, the corpus' stand-ins become real invalid UTF-8: a raw lone surrogate goes as the bytes a
    # careless encoder sends (ED A0 80), and U+FFFD (what API Gateway makes of invalid bytes) as FF.
    return text.encode("utf-8", errors="surrogatepass").replace("\ufffd".encode(), b"\xff")


def over_http(cases: list[Case]) -> list[Case]:
    """The corpus as it can travel over HTTP (events with isBase64Encoded are an integration matter)."""
    return [c for c in cases if not c.base64]


@dataclass
class Target:
    stack: RunningStack
    wire: Wire
    annex_id: str
    instance_id: str

    def dump(self) -> str:
        ddb = self.stack.aws("dynamodb")
        (table,) = ddb.list_tables()["TableNames"]
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": table}
        while True:
            page = ddb.scan(**kwargs)
            items.extend(i for i in page["Items"] if not i["pk"]["S"].startswith("SWEEP#"))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        ec2 = self.stack.aws("ec2")
        state = {
            "items": sorted(items, key=lambda i: (i["pk"]["S"], i["sk"]["S"])),
            "instances": ec2.describe_instances()["Reservations"],
            "tags": ec2.describe_tags()["Tags"],
        }
        return json.dumps(state, sort_keys=True, default=str)


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Iterator[Target]:
    """Its own stack with one annex of two silent instances (no heartbeat writes), launched and recorded,
    and a boot grace long enough that no sweep touches them while the corpus runs."""
    stack = start_stack(tmp_path_factory.mktemp("annex-hostile") / "state", "--param", "BootGrace=30m")
    try:
        wire = Wire(stack)
        body = json.dumps({**BODY, "tags": {"annex-sim": "silent"}}).encode()
        created = wire.send("POST", "/annexes", body)
        assert created.status == 201, created.body
        annex_id = created.body["id"]

        def launched() -> list[str]:
            detail = wire.send("GET", f"/annexes/{annex_id}").body
            return [i["instance_id"] for i in detail["instances"]] if detail["state"] == "running" else []

        instances = wait_for("the target annex to run", launched, timeout=60)
        time.sleep(1)  # the launch function's last write settles before the first dump
        yield Target(stack, wire, annex_id, instances[0])
    finally:
        stop_stack(stack)


def run(target: Target, method: str, path: str, cases: list[Case]) -> None:
    problems = []
    before = target.dump()
    for case in over_http(cases):
        query = "&".join(f"{k}={v}" for k, vs in (case.query or {}).items() for v in vs)
        wire_path = (case.path or path) + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in case.headers.items()] or None
        if case.name == "Content-Type twice":
            headers = [("Content-Type", "application/json"), ("Content-Type", "text/plain")]
        answer = target.wire.send(method, wire_path, encoded(case), headers)
        wrong = documented(answer, case.status)
        if wrong:
            problems.append(f"{method} {wire_path[:80]} [{case.name}]: {wrong}")
    if target.dump() != before:
        problems.append(f"{method} {path}: the corpus changed the table or EC2")
    assert not problems, "\n".join(problems)


def path_cases(path: str) -> list[Case]:
    return [
        Case("a trailing slash", path=path + "/", status=404),
        Case("an empty segment", path="/" + path, status=404),
    ]


def test_create_over_http(target):
    run(target, "POST", "/annexes", body_attacks(BODY) + create_cases() + path_cases("/annexes"))


def test_extend_over_http(target):
    path = f"/annexes/{target.annex_id}/extend"
    run(target, "POST", path, body_attacks({"by": "1h"}) + extend_cases() + path_cases(path))


def test_stop_over_http(target):
    path = f"/annexes/{target.annex_id}/stop"
    run(target, "POST", path, body_attacks({"reason": "done"}) + stop_cases() + path_cases(path))


def test_heartbeat_over_http(target):
    valid = {
        "instance_id": target.instance_id,
        "annex_id": target.annex_id,
        "claimed_slots": 1,
        "total_slots": 4,
    }
    cases = [c for c in body_attacks(valid) + heartbeat_cases(valid) if c.status != 422]
    run(target, "POST", "/heartbeat", cases + path_cases("/heartbeat"))


def test_reads_and_queries_over_http(target):
    cases = [
        Case("scope twice", path="/annexes?scope=all&scope=mine", status=400),
        Case("limit twice", path="/annexes?limit=1&limit=2", status=400),
        Case("an unknown parameter", path="/annexes?surprise=1", status=422),
        Case("an unknown parameter on health", path="/health?x=1", status=422),
        Case("a parameter on one annex", path=f"/annexes/{target.annex_id}?verbose=1", status=422),
        Case("limit NUL", path="/annexes?limit=%00", status=422),
        Case("limit invalid UTF-8", path="/annexes?limit=%ff", status=422),
        Case("scope encoded ALL", path="/annexes?scope=%41LL", status=422),
        Case("next_token crafted", path="/annexes?next_token=eyJwayI6IHsiUyI6ICJ4In19", status=422),
        Case("next_token huge", path="/annexes?next_token=" + "A" * 3000, status=422),
    ]
    run(target, "GET", "/annexes", cases)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/annexes/..%2f", 422),
        ("/annexes/..%2F", 422),
        ("/annexes/%2e%2e", 422),
        ("/annexes/%2E%2E/stop", 405),  # the stop resource, whose only method is POST
        ("/annexes/ax-0000000000000000%2fstop", 422),
        ("/annexes/%00", 422),
        ("/annexes/%ff%fe", 422),
        ("/annexes/ax-%E2%80%AE0000000000000000", 422),
        ("/heal%74h", 404),
        ("/health%2f", 404),
        ("/no/such/route", 404),
        ("/annexes/ax-0000000000000000/nothing", 404),
    ],
)
def test_percent_encoded_paths_are_signed_as_api_gateway_checks_them(target, path, status):
    """The client signs what it sends; the gateway canonicalizes the path as received (as API Gateway does),
    so these reach the function and are refused there, never with a signature mismatch."""
    answer = target.wire.send("GET", path)
    assert documented(answer, status) is None, documented(answer, status)


@pytest.mark.parametrize(
    ("method", "path", "stage"),
    [("GET", "/", None), ("GET", "/health", "/v2"), ("GET", "/health", "")],
)
def test_what_no_resource_serves_gets_api_gateways_own_403(target, method, path, stage):
    """No resource: real API Gateway answers 403 Missing Authentication Token (signed or not), before any
    function; the local gateway answers the same."""
    answer = target.wire.send(method, path, stage=stage)
    assert answer.status == 403
    assert answer.headers.get("x-amzn-errortype") in (
        "MissingAuthenticationTokenException",
        "ForbiddenException",
    )
    assert set(answer.body) == {"message"}


def test_a_wrong_method_is_405_with_allow(target):
    answer = target.wire.send("DELETE", "/health")
    assert documented(answer, 405) is None, answer
    assert answer.headers["allow"] == "GET"
