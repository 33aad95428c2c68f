"""Who may do what, over real HTTP with real signatures."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import RunningStack


def raw(
    stack: RunningStack, method: str, path: str, body: bytes | None = None, headers=None
) -> tuple[int, dict]:
    req = urllib.request.Request(f"{stack.api}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def alices(stack):
    done = stack.client(
        "request", "auth-matrix", "--count", "1", "--lease", "30m", "--idle", "10m", "--yes", "--json"
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_unsigned_requests_are_refused_before_reaching_the_api(stack, alices):
    status, body = raw(stack, "GET", f"/annexes/{alices['id']}")
    assert status == 403
    assert body == {"message": "Missing Authentication Token"}
    status, _ = raw(
        stack, "POST", "/annexes", b'{"name":"x","count":1}', {"Content-Type": "application/json"}
    )
    assert status == 403


def test_a_bad_signature_is_refused(stack, alices):
    status, body = stack.awscurl("GET", f"/annexes/{alices['id']}", secret="not-alices-secret")
    assert status == 403
    assert "signature" in json.dumps(body).lower()


def test_a_third_party_signer_is_accepted(stack, alices):
    status, body = stack.awscurl("GET", f"/annexes/{alices['id']}")
    assert status == 200
    assert body["name"] == "auth-matrix"


def test_another_owner_cannot_see_or_touch_the_annex(stack, alices):
    for method, path, payload in [
        ("GET", f"/annexes/{alices['id']}", None),
        ("POST", f"/annexes/{alices['id']}/extend", {"by": "1h"}),
        ("POST", f"/annexes/{alices['id']}/stop", None),
    ]:
        status, body = stack.awscurl(method, path, profile="bob", body=payload)
        assert status == 404, (path, body)
    # and through the client, by id
    done = stack.client("status", alices["id"], profile="bob")
    assert done.returncode == 1
    assert "no annex" in done.stderr.lower()
    assert stack.client_json("status", alices["id"])["state"] in ("requested", "launching", "running")


def test_the_administrator_sees_everyone_and_others_may_not(stack, alices):
    listing = stack.client_json("list", "--all", profile="admin")
    assert alices["id"] in [a["id"] for a in listing["annexes"]]
    done = stack.client("list", "--all", profile="bob")
    assert done.returncode == 1
    assert "administrators" in done.stderr


def test_a_wrong_method_answers_405_and_an_unknown_route_404(stack):
    status, body = stack.awscurl("DELETE", "/annexes")
    assert status == 405, body
    assert body["error"] == "MethodNotAllowed"
    status, body = stack.awscurl("GET", "/no/such/thing")
    assert status == 404
    assert body["error"] == "NotFound"
