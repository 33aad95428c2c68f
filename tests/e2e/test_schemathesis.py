"""The committed OpenAPI document against the running local gateway: generated requests, signed with
SigV4, valid (positive) and schema-violating (negative), must never produce a server error; every
negative request is refused with a 4xx, and every 4xx the functions answer has the documented error body."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import schemathesis
from annex_local.sigv4 import sign_headers
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, not_a_server_error

from tests.e2e.conftest import start_stack, stop_stack

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
schema = schemathesis.openapi.from_path(str(OPENAPI))
# The signature is added by the session (SigV4 below), so schemathesis does not mutate Authorization.
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], with_security_parameters=False
)
# What a refusal may be here (no 5xx, unlike schemathesis' default list).
schema.config.checks.negative_data_rejection.expected_statuses = [
    "400",
    "403",
    "404",
    "405",
    "409",
    "413",
    "415",
    "422",
]
ERROR_KEYS = {"error", "message", "fields"}


@schemathesis.check
def refusals_have_the_documented_body(ctx, response, case):
    """A 4xx from the functions is `{"error", "message", "fields"}`; API Gateway's own refusals (they
    carry x-amzn-ErrorType) keep API Gateway's shape."""
    gateways_own = "x-amzn-errortype" in {name.lower() for name in response.headers}
    if not 400 <= response.status_code < 500 or gateways_own:
        return None
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) == ERROR_KEYS, f"undocumented error body: {body}"
    assert body["error"], body
    assert body["message"], body
    assert all(set(f) == {"field", "reason"} and f["reason"] for f in body["fields"]), body
    return True


class SigV4(requests.auth.AuthBase):
    def __init__(self, access_key: str, secret_key: str) -> None:
        self.access_key, self.secret_key = access_key, secret_key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body.encode() if isinstance(r.body, str) else (r.body or b"")
        r.headers.pop("Authorization", None)
        signed = sign_headers(
            r.method or "GET",
            r.url or "",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region="us-east-1",
            body=body,
            headers={k: v for k, v in r.headers.items() if k.lower() == "content-type"},
        )
        r.headers.update(signed)
        return r


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory):
    # Its own stack, with small limits: generated requests may create annexes, and those launch.
    running = start_stack(
        tmp_path_factory.mktemp("annex-fuzz") / "state",
        "--param",
        "MaxInstancesPerAnnex=2",
        "--param",
        "MaxLiveInstancesPerOwner=4",
    )
    yield running
    stop_stack(running)


@pytest.fixture(scope="module")
def session(fuzz_stack):
    creds = fuzz_stack.credentials("alice")
    s = requests.Session()
    s.auth = SigV4(creds["aws_access_key_id"], creds["aws_secret_access_key"])
    return s


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_causes_a_server_error(case, fuzz_stack, session):
    case.call_and_validate(
        base_url=fuzz_stack.api,
        session=session,
        checks=[not_a_server_error, negative_data_rejection, refusals_have_the_documented_body],
    )
