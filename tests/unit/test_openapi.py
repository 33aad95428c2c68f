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
