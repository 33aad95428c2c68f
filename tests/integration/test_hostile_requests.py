"""A hostile-input corpus against the API functions' handlers (moto in process): for every route, bodies,
headers, query strings and paths that must be refused. Each answer is a 4xx with the documented error
body, and the table and the embedded EC2 are byte-for-byte unchanged afterwards. A valid request at the
end of each route's run shows that the dump does see a change."""

from __future__ import annotations

import base64
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from annex.aws import clients
from annex_local.events import FakeContext, rest_event
from annex_local.http_api import http_event
from annex_local.template import resolve_environment

from tests.integration.conftest import ADMIN, ALICE, BOB, STACK, TABLE, table_items

INSTANCE_ROLE = "annex-test-stack-AnnexInstanceRole-HOSTILE"
BODY = {"name": "target", "count": 2, "lease": "4h", "idle_timeout": "15m"}
DEEP = 50_000


@dataclass
class Case:
    """One hostile request: `body` is sent as is when it is a str (None: no body), else as JSON."""

    name: str
    body: Any = None
    status: int | None = None  # None: any 4xx
    query: dict[str, list[str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    path: str | None = None  # overrides the route's path
    base64: bool = False


# --- the corpus -----------------------------------------------------------------------------------


def body_attacks(valid: dict[str, Any]) -> list[Case]:
    """Bodies no route may accept, built around the route's own valid body."""
    first = next(iter(valid)) if valid else "name"
    text = json.dumps(valid)
    return [
        Case("huge", json.dumps({**valid, "pad": "x" * 200_000}), 413),
        Case("huge base64", base64.b64encode(b" " * 300_000).decode(), 413, base64=True),
        Case("100,000 deep (too large as well)", "[" * 100_000 + "]" * 100_000, None),
        Case("deep arrays", "[" * DEEP + "]" * DEEP, 400),
        Case("deep objects", '{"a":' * (DEEP // 4) + "1" + "}" * (DEEP // 4), 400),
        Case("unterminated deep", "[" * DEEP, 400),
        Case(
            "nested 9 deep (parses, but deeper than any body)",
            text[:-1] + ', "n": ' + "[" * 8 + "]" * 8 + "}",
            400,
        ),
        Case(
            "duplicate key, second deep",
            text[:-1] + f', "{first}": ' + "[" * 40_000 + "]" * 40_000 + "}",
            400,
        ),
        Case("duplicate key", text[:-1] + f', "{first}": {json.dumps(valid.get(first))}' + "}", 400),
        Case("5000-digit integer", text[:-1] + ', "n": 1' + "0" * 5000 + "}", 400),
        Case("4000-digit integer (Python would parse it)", text[:-1] + ', "n": 1' + "0" * 4000 + "}", 400),
        Case("5000-digit float", text[:-1] + ', "n": 0.' + "1" * 5000 + "}", 400),
        Case("NaN", text[:-1] + ', "n": NaN}', 400),
        Case("Infinity", text[:-1] + ', "n": Infinity}', 400),
        Case("-Infinity", text[:-1] + ', "n": -Infinity}', 400),
        Case("1e999", text[:-1] + ', "n": 1e999}', 400),
        Case("escaped lone surrogate", text[:-1] + ', "n": "\\ud800"}', 400),
        Case("escaped lone low surrogate in a key", text[:-1] + ', "\\udc00": 1}', 400),
        Case("raw lone surrogate", text[:-1] + ', "n": "\ud800"}', 400),
        Case("invalid UTF-8 (as API Gateway hands it on)", text[:-1] + ', "n": "\ufffd"}', 400),
        Case(
            "invalid UTF-8 bytes (base64)",
            base64.b64encode(text[:-1].encode() + b', "n": "\xff\xfe"}').decode(),
            400,
            base64=True,
        ),
        Case(
            "overlong UTF-8 NUL (base64)", base64.b64encode(b'{"n": "\xc0\x80"}').decode(), 400, base64=True
        ),
        Case("not base64", "!!!", 400, base64=True),
        Case("not JSON", "{not json", 400),
        Case("truncated JSON", text[:-1], 400),
        Case("trailing garbage", text + " x", 400),
        Case("two documents", text + text, 400),
        Case("whitespace only", "   ", 400),
        Case("a JSON array", json.dumps([valid]), 422),
        Case("a JSON string", json.dumps("hello"), 422),
        Case("a JSON number", "1", 422),
        Case("JSON null", "null", 422),
        Case("an unknown field", {**valid, "surprise": 1}, 422),
        Case("text/plain", text, 415, headers={"Content-Type": "text/plain"}),
        Case("form", "name=x&count=1", 415, headers={"Content-Type": "application/x-www-form-urlencoded"}),
        Case("multipart without boundary", text, 415, headers={"Content-Type": "multipart/form-data"}),
        Case("xml", "<a/>", 415, headers={"Content-Type": "application/xml"}),
        Case("Content-Type twice", text, 400, headers={"Content-Type": "application/json"}),
    ]


def query_attacks(route_params: dict[str, str]) -> list[Case]:
    cases = [Case("an unknown query parameter", query={"surprise": ["1"]}, status=422)]
    for name, value in route_params.items():
        cases.append(Case(f"{name} twice", query={name: [value, value]}, status=400))
    return cases


def path_attacks(path: str) -> list[Case]:
    return [
        Case("a trailing slash", path=path + "/", status=404),
        Case("an empty segment", path=path.replace("/", "//", 1), status=404),
    ]


def create_cases() -> list[Case]:
    bad_tags: list[tuple[str, dict[str, Any]]] = [
        ("NUL in a value", {"k": "a\u0000b"}),
        ("newline in a value", {"k": "a\nb"}),
        ("right-to-left override in a value", {"k": "abc\u202edef"}),
        ("zero-width joiner in a key", {"a\u200db": "v"}),
        ("tab in a key", {"a\tb": "v"}),
        ("emoji in a value", {"k": "\U0001f600"}),
        ("a value of 257 characters", {"k": "v" * 257}),
        ("a key of 129 characters", {"k" * 129: "v"}),
        ("an empty key", {"": "v"}),
        ("the key Name", {"Name": "spoof"}),
        ("the key name", {"name": "spoof"}),
        ("an aws: key", {"aws:cloudformation:stack-name": "x"}),
        ("an AWS: key", {"AWS:x": "x"}),
        ("an annex: key", {"annex:id": "ax-0000000000000000"}),
        ("an Annex: key", {"Annex:Stack": "other"}),
        ("an aws: value", {"k": "aws:x"}),
        ("a number as value", {"k": 1}),
        ("null as value", {"k": None}),
        ("21 tags", {f"k{i}": "v" for i in range(21)}),
    ]
    return [
        Case('count "1"', {**BODY, "count": "1"}, 422),
        Case("count true", {**BODY, "count": True}, 422),
        Case("count 1.0", {**BODY, "count": 1.0}, 422),
        Case("count 1.5", {**BODY, "count": 1.5}, 422),
        Case("count null", {**BODY, "count": None}, 422),
        Case("count 2^64", {**BODY, "count": 2**64}, 422),
        Case("lease 600", {**BODY, "lease": 600}, 422),
        Case("lease 600.0", {**BODY, "lease": 600.0}, 422),
        Case("lease true", {**BODY, "lease": True}, 422),
        Case("lease in Arabic-Indic digits", {**BODY, "lease": "\u0663h"}, 422),
        Case("lease PT", {**BODY, "lease": "PT"}, 422),
        Case("lease of 10,000 digits of hours", {**BODY, "lease": "9" * 10_000 + "h"}, 422),
        Case("idle_timeout 60", {**BODY, "idle_timeout": 60}, 422),
        Case("name with a NUL", {**BODY, "name": "a\u0000b"}, 422),
        Case("name in Cyrillic", {**BODY, "name": "\u0430dmin"}, 422),
        Case("name as a number", {**BODY, "name": 7}, 422),
        Case("market as a list", {**BODY, "market": ["spot"]}, 422),
        Case("client_token with a newline", {**BODY, "client_token": "a\nb"}, 422),
        Case("instance_type with a NUL", {**BODY, "instance_type": "c7i.xlarge\u0000"}, 422),
        *(Case(f"tags: {label}", {**BODY, "tags": tags}, 422) for label, tags in bad_tags),
    ]


def extend_cases() -> list[Case]:
    return [
        Case("by 3600", {"by": 3600}, 422),
        Case("by 1.5", {"by": 1.5}, 422),
        Case("by true", {"by": True}, 422),
        Case("by a list", {"by": ["1h"]}, 422),
        Case("until an epoch number", {"until": 1_900_000_000}, 422),
        Case("until out of range after UTC", {"until": "9999-12-31T23:59:59-23:59"}, 422),
        Case("until in Arabic-Indic digits", {"until": "\u0662\u0660\u0663\u0660-01-01T00:00:00Z"}, 422),
        Case("neither", {}, 422),
        Case("both null", {"by": None, "until": None}, 422),
        Case("by and an unknown field", {"by": "1h", "also": "1h"}, 422),
    ]


def stop_cases() -> list[Case]:
    return [
        Case("reason as a number", {"reason": 5}, 422),
        Case("reason with a NUL", {"reason": "a\u0000b"}, 422),
        Case("reason with a right-to-left override", {"reason": "\u202eevil"}, 422),
        Case("reason of 201 characters", {"reason": "r" * 201}, 422),
    ]


def heartbeat_cases(valid: dict[str, Any]) -> list[Case]:
    return [
        Case("claimed_slots true", {**valid, "claimed_slots": True}, 422),
        Case('claimed_slots "4"', {**valid, "claimed_slots": "4"}, 422),
        Case("claimed_slots 4.0", {**valid, "claimed_slots": 4.0}, 422),
        Case("total_slots 1e3", {**valid, "total_slots": 1e3}, 422),
        Case("instance_id as a number", {**valid, "instance_id": 1}, 422),
        Case("annex_id with a newline", {**valid, "annex_id": valid["annex_id"] + "\n"}, 422),
    ]


def list_cases() -> list[Case]:
    return [
        Case("scope all and mine", query={"scope": ["all", "mine"]}, status=400),
        Case("scope ALL", query={"scope": ["ALL"]}, status=422),
        Case("limit 1.5", query={"limit": ["1.5"]}, status=422),
        Case("limit true", query={"limit": ["true"]}, status=422),
        Case("limit in Arabic-Indic digits", query={"limit": ["\u0663"]}, status=422),
        Case("limit 10^30", query={"limit": ["1" + "0" * 30]}, status=422),
        Case("next_token not base64", query={"next_token": ["!!"]}, status=422),
        Case("next_token of 3000 characters", query={"next_token": ["A" * 3000]}, status=422),
        Case(
            "next_token a crafted start key",
            query={"next_token": [base64.urlsafe_b64encode(b'{"pk": {"S": "x"}}').decode()]},
            status=422,
        ),
        Case(
            "next_token a list",
            query={"next_token": [base64.urlsafe_b64encode(b"[1, 2]").decode()]},
            status=422,
        ),
    ]


# --- the world the hostile requests must leave unchanged -----------------------------------------


def dump(ddb, ec2) -> str:
    """Everything a request could change: every table item and every EC2 instance (state and tags)."""
    instances = ec2.describe_instances()["Reservations"]
    tags = ec2.describe_tags()["Tags"]
    return json.dumps(
        {"items": table_items(ddb), "instances": instances, "tags": tags}, sort_keys=True, default=str
    )


@dataclass
class World:
    ddb: Any
    ec2: Any
    request: Any  # functions.request.app
    heartbeat: Any  # functions.heartbeat.app
    annex_id: str
    instance_id: str

    def call(self, module: Any, method: str, path: str, case: Case, *, as_: str = ALICE) -> tuple[int, Any]:
        body = case.body if isinstance(case.body, str) or case.body is None else json.dumps(case.body)
        if module is self.heartbeat:  # the heartbeat HTTP API: payload format 2.0
            return self._call_http_api(module, method, path, case, body, as_)
        event = rest_event(method, case.path or path, caller_arn=as_, body=body, headers=case.headers or None)
        if case.name == "Content-Type twice":
            event["multiValueHeaders"]["Content-Type"] = ["application/json", "text/plain"]
        if case.query:
            event["queryStringParameters"] = {k: v[-1] for k, v in case.query.items()}
            event["multiValueQueryStringParameters"] = case.query
        if case.base64:
            event["isBase64Encoded"] = True
        resp = module.handler(event, FakeContext(module.__name__.split(".")[1]))
        try:
            return resp["statusCode"], json.loads(resp["body"])
        except (TypeError, ValueError):
            return resp["statusCode"], resp.get("body")

    def _call_http_api(
        self, module: Any, method: str, path: str, case: Case, body: str | None, as_: str
    ) -> tuple[int, Any]:
        headers = list((case.headers or {}).items())
        if case.name == "Content-Type twice":
            headers = [("Content-Type", "application/json"), ("Content-Type", "text/plain")]
        event = http_event(
            method, case.path or path, caller_arn=as_, body=body, headers=headers, query=case.query
        )
        if case.base64:
            event["isBase64Encoded"] = True
        resp = module.handler(event, FakeContext("heartbeat"))
        try:
            return resp["statusCode"], json.loads(resp["body"])
        except (TypeError, ValueError):
            return resp["statusCode"], resp.get("body")

    def instance_arn(self) -> str:
        return f"arn:aws:sts::123456789012:assumed-role/{INSTANCE_ROLE}/{self.instance_id}"


@pytest.fixture
def world(api, launch, ddb, ec2, monkeypatch) -> Iterator[World]:
    """An annex with two running instances, launched by the launch function, and the heartbeat function
    with its template environment."""
    status, annex = api.call("POST", "/annexes", body=BODY)
    assert status == 201, annex
    launch.deliver()
    env = resolve_environment(
        "HeartbeatFunction",
        table_name=TABLE,
        stack_name=STACK,
        overrides={"AnnexInstanceRole": INSTANCE_ROLE},
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    heartbeat = importlib.import_module("functions.heartbeat.app")
    heartbeat.settings.cache_clear()
    heartbeat.service.cache_clear()
    _, detail = api.call("GET", f"/annexes/{annex['id']}")
    assert len(detail["instances"]) == 2, detail
    yield World(ddb, ec2, api.module, heartbeat, annex["id"], detail["instances"][0]["instance_id"])
    heartbeat.settings.cache_clear()
    heartbeat.service.cache_clear()
    clients.client.cache_clear()


def assert_documented_error(status: int, body: Any, expected: int | None) -> str | None:
    """None if the answer is the documented refusal, else what is wrong with it."""
    if expected is not None and status != expected:
        return f"status {status}, expected {expected}: {body}"
    if not 400 <= status < 500:
        return f"status {status} is not a 4xx: {body}"
    if not isinstance(body, dict) or set(body) != {"error", "message", "fields"}:
        return f"not the documented error body: {body!r}"[:300]
    if not (isinstance(body["error"], str) and body["error"] and isinstance(body["message"], str)):
        return f"error/message missing: {body}"
    if not all(isinstance(f, dict) and set(f) == {"field", "reason"} and f["reason"] for f in body["fields"]):
        return f"fields malformed: {body}"
    return None


def run_corpus(world: World, module: Any, method: str, path: str, cases: list[Case], **kwargs: Any) -> None:
    """Every case answers the documented 4xx; the dump after the whole run equals the dump before (a
    refused request that changed something cannot be undone by the next one)."""
    problems = []
    before = dump(world.ddb, world.ec2)
    for case in cases:
        status, body = world.call(module, method, path, case, **kwargs)
        wrong = assert_documented_error(status, body, case.status)
        if wrong:
            problems.append(f"{method} {case.path or path} [{case.name}]: {wrong}")
    if dump(world.ddb, world.ec2) != before:
        problems.append(f"{method} {path}: the corpus changed the table or EC2")
    assert not problems, "\n".join(problems)


# --- the tests ------------------------------------------------------------------------------------


def test_create_refuses_the_corpus_and_creates_nothing(world):
    cases = body_attacks(BODY) + create_cases() + path_attacks("/annexes") + query_attacks({})
    run_corpus(world, world.request, "POST", "/annexes", cases)
    before = dump(world.ddb, world.ec2)
    status, _ = world.call(world.request, "POST", "/annexes", Case("valid", {**BODY, "name": "control"}))
    assert status == 201
    assert dump(world.ddb, world.ec2) != before


def test_extend_refuses_the_corpus_and_moves_no_lease(world):
    path = f"/annexes/{world.annex_id}/extend"
    cases = body_attacks({"by": "1h"}) + extend_cases() + path_attacks(path) + query_attacks({})
    cases.append(Case("no body", None, 422))
    run_corpus(world, world.request, "POST", path, cases)
    before = dump(world.ddb, world.ec2)
    assert world.call(world.request, "POST", path, Case("valid", {"by": "1h"}))[0] == 200
    assert dump(world.ddb, world.ec2) != before


def test_stop_refuses_a_present_malformed_body_and_stops_nothing(world):
    path = f"/annexes/{world.annex_id}/stop"
    cases = body_attacks({"reason": "done"}) + stop_cases() + path_attacks(path) + query_attacks({})
    run_corpus(world, world.request, "POST", path, cases)
    before = dump(world.ddb, world.ec2)
    status, stopped = world.call(world.request, "POST", path, Case("empty body stays fine", None))
    assert status == 200, stopped
    assert stopped["state"] == "ended"
    assert dump(world.ddb, world.ec2) != before


def test_heartbeat_refuses_the_corpus_and_records_nothing(world):
    valid = {
        "instance_id": world.instance_id,
        "annex_id": world.annex_id,
        "claimed_slots": 1,
        "total_slots": 4,
    }
    cases = body_attacks(valid) + heartbeat_cases(valid) + path_attacks("/heartbeat") + query_attacks({})
    run_corpus(world, world.heartbeat, "POST", "/heartbeat", cases, as_=world.instance_arn())
    before = dump(world.ddb, world.ec2)
    status, answer = world.call(
        world.heartbeat, "POST", "/heartbeat", Case("valid", valid), as_=world.instance_arn()
    )
    assert status == 200, answer
    assert dump(world.ddb, world.ec2) != before


@pytest.mark.parametrize(
    ("path", "params"),
    [("/annexes", {"scope": "mine", "limit": "5"}), ("/annexes/{id}", {}), ("/health", {})],
)
def test_reads_refuse_the_corpus(world, path, params):
    path = path.replace("{id}", world.annex_id)
    cases = path_attacks(path) + query_attacks(params)
    cases += [c for c in body_attacks({"x": 1}) if c.status in (400, 413, 415)]
    if path == "/annexes":
        cases += list_cases()
    run_corpus(world, world.request, "GET", path, cases)
    assert world.call(world.request, "GET", path, Case("valid"))[0] == 200


def test_a_path_id_that_is_not_an_id_is_refused(world):
    for raw in ("../", "..", "ax-0000000000000000/../x", "\u0000", "ax-" + "0" * 10_000):
        path = f"/annexes/{raw}"
        event = rest_event(
            "GET", path, caller_arn=ALICE, path_parameters={"annex_id": raw}, resource="/annexes/{annex_id}"
        )
        resp = world.request.handler(event, FakeContext("request"))
        assert assert_documented_error(resp["statusCode"], json.loads(resp["body"]), None) is None, (
            raw,
            resp,
        )


# --- page tokens: bound to the caller and the scope ----------------------------------------------


def test_a_page_token_works_only_for_who_and_what_it_was_issued(api):
    for i in range(3):
        assert api.call("POST", "/annexes", body={**BODY, "name": f"page-{i}", "count": 1})[0] == 201
    status, first = api.call("GET", "/annexes", query={"limit": "2"})
    assert status == 200
    token = first["next_token"]
    assert token
    # the caller it was issued to, in the same scope, gets the next page
    status, second = api.call("GET", "/annexes", query={"limit": "2", "next_token": token})
    assert status == 200
    assert sorted(a["name"] for a in first["annexes"] + second["annexes"]) == ["page-0", "page-1", "page-2"]
    # anyone else, another scope, or a changed token: 422 naming next_token, before the store sees it
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    inner_only = token.split(".")[0]
    for as_, query in [
        (BOB, {"next_token": token}),
        (ADMIN, {"next_token": token, "scope": "all"}),
        (ALICE, {"next_token": token, "scope": "all"}),
        (ALICE, {"next_token": forged}),
        (ALICE, {"next_token": inner_only}),
    ]:
        status, body = api.call("GET", "/annexes", as_=as_, query={"limit": "2", **query})
        assert status in (403, 422), body
        if status == 422:
            assert [f["field"] for f in body["fields"]] == ["next_token"], body
