"""The local gateway serving the template's heartbeat HTTP API as deployed: payload format 2.0 events with
the verified caller in `authorizer.iam`, and execute-api:Invoke decided by the caller's own IAM policies
(the instance role's from template.yaml, the README's researchers' policy for people)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from annex_local.gateway import Gateway, load_routes, stage_name
from annex_local.http_api import (
    INVOKE,
    IdentityPolicies,
    http_event,
    invoke_arn,
    researcher_statements,
    role_statements,
)
from annex_local.sigv4 import Identity, sign_headers

ACCT = "123456789012"
ROLE = f"arn:aws:iam::{ACCT}:role/annex-local-AnnexInstanceRole"
INSTANCE = f"arn:aws:sts::{ACCT}:assumed-role/annex-local-AnnexInstanceRole/i-0123456789abcdef0"
ALICE = f"arn:aws:iam::{ACCT}:user/alice"
REFS = {
    "AnnexInstanceRole.Arn": ROLE,
    "HeartbeatApi": "local-heartbeat",
    "AnnexApi": "local",
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": ACCT,
    "PoolTokenParameterName": "pool-token",
}
KEYS = {
    "ASIAINSTANCE": Identity("instance-secret", INSTANCE),
    "AKIAALICE": Identity("alice-secret", ALICE),
}
HOST = "127.0.0.1:9"


def policies() -> IdentityPolicies:
    p = IdentityPolicies()
    p.add(ROLE, role_statements("AnnexInstanceRole", REFS))
    p.add(ALICE, researcher_statements("us-east-1", "local"))
    return p


def authorizer(p: IdentityPolicies) -> Any:
    return lambda who, method, path: p.allows(
        who.arn, INVOKE, invoke_arn("us-east-1", "local-heartbeat", "v1", method, path)
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "application/json"},
            "body": '{"action":"run"}',
        }


def heartbeat_gateway() -> tuple[Gateway, Recorder]:
    rec = Recorder()
    gw = Gateway(
        KEYS, api="HeartbeatApi", handlers={"HeartbeatFunction": rec}, authorize=authorizer(policies())
    )
    return gw, rec


def call(gw: Gateway, key: str, secret: str, method: str, target: str, body: bytes = b"") -> Any:
    headers = sign_headers(
        method,
        f"http://{HOST}{target}",
        access_key=key,
        secret_key=secret,
        region="us-east-1",
        body=body,
        headers={"Content-Type": "application/json"} if body else {},
    )
    return gw.handle(method, target, [("Host", HOST), *headers.items()], body)


def test_the_heartbeat_api_has_one_route_on_stage_v1():
    (route,) = load_routes(api="HeartbeatApi")
    assert (route.method, route.path, route.function) == ("POST", "/heartbeat", "HeartbeatFunction")
    assert stage_name(api="HeartbeatApi") == "v1"


def test_an_instance_gets_through_with_a_payload_2_event_naming_it():
    gw, rec = heartbeat_gateway()
    answer = call(gw, "ASIAINSTANCE", "instance-secret", "POST", "/v1/heartbeat", b'{"a":1}')
    assert answer.status == 200, answer.body
    (event,) = rec.events
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /heartbeat"
    assert event["rawPath"] == "/v1/heartbeat"  # a named stage stays in rawPath
    assert event["requestContext"]["stage"] == "v1"
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["requestContext"]["authorizer"]["iam"]["userArn"] == INSTANCE
    assert event["requestContext"]["authorizer"]["iam"]["accessKey"] == "ASIAINSTANCE"
    assert "identity" not in event["requestContext"]
    assert event["headers"]["content-type"] == "application/json"
    assert event["body"] == '{"a":1}'


def test_a_researcher_is_refused_as_api_gateway_refuses_her_before_any_function():
    gw, rec = heartbeat_gateway()
    answer = call(gw, "AKIAALICE", "alice-secret", "POST", "/v1/heartbeat", b'{"a":1}')
    assert answer.status == 403
    assert json.loads(answer.body) == {"message": "Forbidden"}
    assert rec.events == []


@pytest.mark.parametrize(
    ("method", "target"), [("GET", "/v1/heartbeat"), ("POST", "/v1/annexes"), ("POST", "/heartbeat")]
)
def test_no_route_is_an_http_apis_404(method, target):
    gw, rec = heartbeat_gateway()
    answer = call(gw, "ASIAINSTANCE", "instance-secret", method, target)
    assert answer.status == 404
    assert json.loads(answer.body) == {"message": "Not Found"}
    assert rec.events == []


def test_identity_policies_decide_as_iam_does():
    p = policies()
    heartbeat = invoke_arn("us-east-1", "local-heartbeat", "v1", "POST", "/heartbeat")
    assert p.allows(INSTANCE, INVOKE, heartbeat)
    assert not p.allows(
        INSTANCE, INVOKE, invoke_arn("us-east-1", "local-heartbeat", "v1", "GET", "/heartbeat")
    )
    assert not p.allows(INSTANCE, INVOKE, invoke_arn("us-east-1", "local", "v1", "GET", "/annexes"))
    assert not p.allows(ALICE, INVOKE, heartbeat)
    assert p.allows(ALICE, INVOKE, invoke_arn("us-east-1", "local", "v1", "POST", "/annexes/ax-1/extend"))
    # a role session is judged by its role; another role's session named like the instance is not
    assert not p.allows(f"arn:aws:sts::{ACCT}:assumed-role/Other/i-0123456789abcdef0", INVOKE, heartbeat)
    # an explicit deny wins over an allow
    p.add(ROLE, [{"Effect": "Deny", "Action": "execute-api:*", "Resource": "*"}])
    assert not p.allows(INSTANCE, INVOKE, heartbeat)


def test_a_repeated_header_and_query_are_joined_as_api_gateway_joins_them():
    event = http_event(
        "POST",
        "/heartbeat",
        caller_arn=INSTANCE,
        body="{}",
        headers=[("X-A", "1"), ("x-a", "2")],
        query={"q": ["1", "2"]},
    )
    assert event["headers"]["x-a"] == "1,2"
    assert event["queryStringParameters"] == {"q": "1,2"}
    assert event["rawQueryString"] == "q=1&q=2"
