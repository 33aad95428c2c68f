"""The local gateway's API Gateway behaviour, without sockets: routes from template.yaml, the proxy event
the handler receives, and how its answer is written back."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from annex_local.gateway import Gateway, Route, Router, load_routes, stage_name
from annex_local.sigv4 import Identity, sign_headers

ALICE = "arn:aws:iam::123456789012:user/alice"
HOST = "127.0.0.1:9"
KEYS = {"AKIAALICE": Identity("alice-secret", ALICE)}


def test_routes_are_the_templates_api_events():
    routes = {(r.method, r.path): r for r in load_routes() if r.function == "RequestFunction"}
    resources = [
        "/annexes",
        "/annexes/{annex_id}",
        "/annexes/{annex_id}/extend",
        "/annexes/{annex_id}/shorten",
        "/annexes/{annex_id}/idle-timeout",
        "/annexes/{annex_id}/stop",
        "/health",
        "/annexes/{annex_id}/budget",
        "/estimates",
        "/notifications",
        "/admin/budgets",
        "/admin/spend",
    ]
    assert set(routes) == {
        ("POST", "/annexes"),
        ("GET", "/annexes"),
        ("GET", "/annexes/{annex_id}"),
        ("POST", "/annexes/{annex_id}/extend"),
        ("POST", "/annexes/{annex_id}/shorten"),
        ("POST", "/annexes/{annex_id}/idle-timeout"),
        ("POST", "/annexes/{annex_id}/stop"),
        ("GET", "/health"),
        ("POST", "/annexes/{annex_id}/budget"),
        ("POST", "/estimates"),
        ("POST", "/notifications"),
        ("PUT", "/admin/budgets"),
        ("GET", "/admin/spend"),
        ("ANY", "/{proxy+}"),
        # so that a wrong method reaches the function (405) instead of API Gateway's 403
        *(("ANY", path) for path in resources),
    }
    assert {(r.module, r.attribute) for r in routes.values()} == {("functions.request.app", "handler")}
    assert stage_name() == "v1"


ROUTER = Router(
    [
        Route("/annexes", "GET", "F", "m", "h"),
        Route("/annexes/{annex_id}", "GET", "F", "m", "h"),
        Route("/annexes/{annex_id}/extend", "POST", "F", "m", "h"),
        Route("/{proxy+}", "ANY", "Fallback", "m", "h"),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "resource", "params"),
    [
        ("GET", "/annexes", "/annexes", {}),
        ("GET", "/annexes/ax-1", "/annexes/{annex_id}", {"annex_id": "ax-1"}),
        ("POST", "/annexes/ax-1/extend", "/annexes/{annex_id}/extend", {"annex_id": "ax-1"}),
        ("GET", "/nothing/here", "/{proxy+}", {"proxy": "nothing/here"}),
        ("DELETE", "/other", "/{proxy+}", {"proxy": "other"}),
    ],
)
def test_the_most_specific_resource_wins(method, path, resource, params):
    found = ROUTER.find(method, path)
    assert found is not None
    assert found[0].path == resource
    assert found[1] == params


def test_a_method_missing_on_the_matched_resource_does_not_fall_back_to_proxy():
    assert ROUTER.find("DELETE", "/annexes") is None
    assert ROUTER.find("GET", "/") is None  # {proxy+} needs at least one segment


class Recorder:
    def __init__(self, response: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self.response = response

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        if isinstance(self.response, Exception):
            raise self.response
        return self.response


def gateway(response: Any, **kwargs: Any) -> tuple[Gateway, Recorder]:
    recorder = Recorder(response)
    return Gateway(KEYS, handlers={"RequestFunction": recorder}, **kwargs), recorder


def call(gw: Gateway, method: str, target: str, body: bytes = b"", *, sign: bool = True):
    headers = {"Content-Type": "application/json"} if body else {}
    if sign:
        headers = sign_headers(
            method,
            f"http://{HOST}{target}",
            access_key="AKIAALICE",
            secret_key="alice-secret",
            region="us-east-1",
            body=body,
            headers=headers,
        )
    return gw.handle(method, target, [("Host", HOST), *headers.items()], body)


def test_the_handler_gets_an_api_gateway_proxy_event_as_the_verified_caller():
    gw, rec = gateway({"statusCode": 200, "body": "{}"})
    answer = call(gw, "POST", "/v1/annexes/ax-0123456789abcdef/extend?dry=1", b'{"by":"2h"}')
    assert answer.status == 200
    event = rec.events[0]
    assert event["httpMethod"] == "POST"
    assert event["path"] == "/annexes/ax-0123456789abcdef/extend"
    assert event["resource"] == "/annexes/{annex_id}/extend"
    assert event["pathParameters"] == {"annex_id": "ax-0123456789abcdef"}
    assert event["queryStringParameters"] == {"dry": "1"}
    assert event["body"] == '{"by":"2h"}'
    assert event["requestContext"]["identity"]["userArn"] == ALICE
    assert event["requestContext"]["identity"]["accessKey"] == "AKIAALICE"
    assert event["requestContext"]["stage"] == "v1"
    assert event["headers"]["Content-Type"] == "application/json"


def test_the_handlers_answer_is_written_back_with_its_headers():
    gw, _ = gateway(
        {
            "statusCode": 201,
            "headers": {"Location": "/annexes/ax-1"},
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
            "body": base64.b64encode(b'{"id":"ax-1"}').decode(),
            "isBase64Encoded": True,
        }
    )
    answer = call(gw, "GET", "/v1/health")
    assert answer.status == 201
    assert answer.body == b'{"id":"ax-1"}'
    assert ("Location", "/annexes/ax-1") in answer.headers
    assert [v for k, v in answer.headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert any(k == "x-amzn-RequestId" for k, _ in answer.headers)


@pytest.mark.parametrize("response", [RuntimeError("boom"), {"body": "no status"}, None])
def test_a_failing_or_malformed_handler_is_a_502(response):
    gw, _ = gateway(response)
    answer = call(gw, "GET", "/v1/health")
    assert answer.status == 502
    assert json.loads(answer.body) == {"message": "Internal server error"}


def test_requests_refused_before_the_handler_runs():
    gw, rec = gateway({"statusCode": 200, "body": "{}"})
    unsigned = call(gw, "GET", "/v1/health", sign=False)
    assert (unsigned.status, json.loads(unsigned.body)) == (403, {"message": "Missing Authentication Token"})
    assert ("x-amzn-ErrorType", "MissingAuthenticationTokenException") in unsigned.headers
    wrong_stage = call(gw, "GET", "/prod/health")
    assert (wrong_stage.status, json.loads(wrong_stage.body)) == (403, {"message": "Forbidden"})
    tampered_headers = sign_headers(
        "POST",
        f"http://{HOST}/v1/annexes",
        access_key="AKIAALICE",
        secret_key="alice-secret",
        region="us-east-1",
        body=b'{"count":1}',
        headers={"Content-Type": "application/json"},
    )
    tampered = gw.handle("POST", "/v1/annexes", [("Host", HOST), *tampered_headers.items()], b'{"count":99}')
    assert tampered.status == 403
    assert rec.events == []


def test_an_authorizer_can_deny_execute_api_invoke():
    gw, rec = gateway(
        {"statusCode": 200, "body": "{}"}, authorize=lambda who, method, path: path == "/heartbeat"
    )
    answer = call(gw, "GET", "/v1/annexes")
    assert answer.status == 403
    assert json.loads(answer.body)["Message"].startswith(
        f"User: {ALICE} is not authorized to perform: execute-api:Invoke on resource: arn:aws:execute-api:"
    )
    assert rec.events == []


def test_time_of_signing_is_checked_against_now():
    gw, rec = gateway({"statusCode": 200, "body": "{}"})
    stale = sign_headers(
        "GET",
        f"http://{HOST}/v1/health",
        access_key="AKIAALICE",
        secret_key="alice-secret",
        region="us-east-1",
    )
    stale["X-Amz-Date"] = datetime(2020, 1, 1, tzinfo=UTC).strftime("%Y%m%dT%H%M%SZ")
    answer = gw.handle("GET", "/v1/health", [("Host", HOST), *stale.items()], b"")
    assert answer.status == 403
    assert "Signature expired" in json.loads(answer.body)["message"]
    assert rec.events == []


def test_methods_api_gateway_does_not_route_never_reach_a_function():
    assert ROUTER.find("TRACE", "/annexes") is None
    assert ROUTER.find("PROPFIND", "/anything") is None
    route, _ = ROUTER.find("PATCH", "/anything")
    assert route.function == "Fallback"
