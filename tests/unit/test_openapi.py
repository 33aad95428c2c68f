"""The committed OpenAPI document must match what the routes generate."""

import json
from pathlib import Path

from scripts.openapi import render

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_openapi_matches_the_code():
    assert COMMITTED.read_text() == render(), "docs/openapi.json is stale: run `make openapi` and commit it"


def test_every_route_is_documented_with_its_error_shape():
    doc = json.loads(COMMITTED.read_text())
    assert {
        "/annexes",
        "/annexes/{annex_id}",
        "/annexes/{annex_id}/extend",
        "/annexes/{annex_id}/stop",
        "/health",
    } <= set(doc["paths"])
    create = doc["paths"]["/annexes"]["post"]
    assert {"201", "409", "422"} <= set(create["responses"])
    assert doc["security"] == [{"sigv4": []}]


def test_it_describes_the_user_api_only():
    # the heartbeat route is on HeartbeatApi, which researchers cannot call: not part of this document
    doc = json.loads(COMMITTED.read_text())
    assert not any("heartbeat" in path for path in doc["paths"])
    assert "HeartbeatRequest" not in doc.get("components", {}).get("schemas", {})
