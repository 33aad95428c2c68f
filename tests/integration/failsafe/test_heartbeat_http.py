"""POST /heartbeat as HTTP: the heartbeat's own adapter (no Powertools router) answers every refusal as the
request API does, refuses other methods and paths, lets a store failure through to Lambda, and keeps
its logs and its one metric."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import pytest
from annex.aws import clients
from annex_local.http_api import http_event
from botocore.exceptions import ClientError

from tests.integration.conftest import table_items
from tests.integration.failsafe.conftest import instance_arn, load_event

ANNEX = "ax-0123456789abcdef"
A = "i-0a1b2c3d4e5f60718"  # the instance the event files sign as
B = "i-0b2c3d4e5f6071829"
VALID = {"instance_id": A, "annex_id": ANNEX, "claimed_slots": 3, "total_slots": 4}


@pytest.fixture
def recorded(fleet):
    annex, _ = fleet.annex(annex_id=ANNEX, instance_ids=[A, B], idle=timedelta(minutes=20))
    return annex


def send(heartbeat_fn, at, method="POST", path="/heartbeat", body: Any = VALID, **kwargs):
    text = None if body is None else json.dumps(body)
    event = http_event(method, path, caller_arn=instance_arn(A), body=text, **kwargs)
    resp = heartbeat_fn(event, at=at)
    return resp, json.loads(resp["body"])


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_another_method_is_405_allowing_post_and_changes_nothing(fleet, recorded, heartbeat_fn, method):
    before = table_items(fleet.ddb)

    resp, body = send(heartbeat_fn, fleet.t0 + timedelta(minutes=2), method=method)

    assert resp["statusCode"] == 405
    assert resp["headers"]["Allow"] == "POST"
    assert body["error"] == "MethodNotAllowed"
    assert "/heartbeat" in body["message"]
    assert table_items(fleet.ddb) == before


@pytest.mark.parametrize("path", ["/", "/heartbeats", "/annexes", "/heartbeat/now"])
def test_another_path_is_404_naming_it_and_changes_nothing(fleet, recorded, heartbeat_fn, path):
    before = table_items(fleet.ddb)

    resp, body = send(heartbeat_fn, fleet.t0 + timedelta(minutes=2), path=path)

    assert resp["statusCode"] == 404
    assert "Allow" not in resp["headers"]
    assert body["error"] == "NotFound"
    assert f"no route {path};" in body["message"]
    assert table_items(fleet.ddb) == before


def test_the_stage_is_not_part_of_the_path(fleet, recorded, heartbeat_fn):
    at = fleet.t0 + timedelta(minutes=2)
    for stage in ("v1", "$default"):
        resp, body = send(heartbeat_fn, at, stage=stage)
        assert resp["statusCode"] == 200, body
        assert body["action"] == "run"


def test_a_body_declared_as_a_json_media_type_is_read_as_json(fleet, recorded, heartbeat_fn):
    """The strict-input table in the README: `application/*+json` is JSON, and media types are case-blind."""
    at = fleet.t0 + timedelta(minutes=2)
    for content_type in ("application/merge-patch+json", "Application/JSON; charset=utf-8"):
        resp, body = send(heartbeat_fn, at, headers={"Content-Type": content_type})
        assert resp["statusCode"] == 200, body
    assert fleet.instance(ANNEX, A).instance.claimed_slots == 3


def test_refusals_read_as_the_request_apis(fleet, recorded, heartbeat_fn, api):
    """The same mistake gets the same answer from both APIs: no body, an unknown field."""
    at = fleet.t0 + timedelta(minutes=2)
    extend = "/annexes/ax-0000000000000000/extend"

    heartbeat_missing = send(heartbeat_fn, at, body=None)
    request_missing = api.call("POST", extend)
    heartbeat_unknown = send(heartbeat_fn, at, body={**VALID, "surprise": 1})
    request_unknown = api.call("POST", extend, body={"by": "1h", "surprise": 1})

    assert heartbeat_missing[0]["statusCode"] == request_missing[0] == 422
    assert heartbeat_missing[1] == request_missing[1]
    assert heartbeat_unknown[0]["statusCode"] == request_unknown[0] == 422
    assert heartbeat_unknown[1] == request_unknown[1]


def test_a_store_failure_reaches_lambda_and_is_not_answered_as_a_refusal(fleet, recorded, heartbeat_fn):
    """API Gateway answers a function error with 500: the caller (the agent) retries; a 4xx would tell it
    the request itself was wrong."""

    def throttled(**_: Any) -> None:
        error = {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}
        raise ClientError({"Error": error}, "TransactWriteItems")

    heartbeat_fn.module.service()  # the function's own client, as the handler makes it
    clients.dynamodb().meta.events.register("before-call.dynamodb.*", throttled)
    before = table_items(fleet.ddb)

    with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
        send(heartbeat_fn, fleet.t0 + timedelta(minutes=2))

    assert table_items(fleet.ddb) == before


def test_a_refused_caller_is_logged_under_its_annex_and_instance_and_counted(
    fleet, recorded, heartbeat_fn, capsys, monkeypatch
):
    logs = io.StringIO()
    monkeypatch.setattr(heartbeat_fn.module.logger.registered_handler, "stream", logs)
    capsys.readouterr()

    resp = heartbeat_fn(load_event("heartbeat-forged"), at=fleet.t0 + timedelta(minutes=2))

    assert resp["statusCode"] == 403
    forged = json.loads(load_event("heartbeat-forged")["body"])
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    refused = next(line for line in lines if line["message"] == "heartbeat refused")
    assert refused["correlation_id"] == forged["annex_id"]
    assert refused["instance_id"] == forged["instance_id"]
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert [b.get("HeartbeatsRefused") for b in blobs] == [[1.0]]
