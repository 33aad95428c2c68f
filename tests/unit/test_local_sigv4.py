"""The local SigV4 verifier: it accepts what botocore signs and refuses what API Gateway refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from annex_local.sigv4 import Identity, SigV4Error, SigV4Verifier, sign_headers

HOST = "127.0.0.1:8080"
URL = f"http://{HOST}/v1/annexes"
ALICE = "arn:aws:iam::123456789012:user/alice"
ROLE = "arn:aws:sts::123456789012:assumed-role/AnnexInstanceRole/i-0abc"
NOW = datetime(2026, 11, 22, 14, 0, 0, tzinfo=UTC)
BODY = b'{"name":"bio","count":3}'
IDENTITIES = {
    "AKIAALICE": Identity("alice-secret", ALICE),
    "ASIAROLE": Identity("role-secret", ROLE, "role-token", NOW + timedelta(hours=1)),
    "AKIATUPLE": ("tuple-secret", "arn:aws:iam::123456789012:user/tuple"),
}


def signed(
    method="POST",
    url=URL,
    body=BODY,
    *,
    key="AKIAALICE",
    secret="alice-secret",
    token=None,
    region="us-east-1",
    service="execute-api",
    at=NOW,
    headers=None,
):
    base = {"Content-Type": "application/json", **(headers or {})} if body else dict(headers or {})
    with mock.patch("botocore.auth.get_current_datetime", return_value=at.replace(tzinfo=None)):
        return sign_headers(
            method,
            url,
            access_key=key,
            secret_key=secret,
            region=region,
            body=body,
            headers=base,
            session_token=token,
            service=service,
        )


def verify(headers, *, method="POST", target="/v1/annexes", body=BODY, now=NOW):
    wire = [("Host", HOST), *headers.items()]
    return SigV4Verifier(IDENTITIES, region="us-east-1").verify(method, target, wire, body, now=now)


def refused(headers, **kwargs) -> SigV4Error:
    with pytest.raises(SigV4Error) as info:
        verify(headers, **kwargs)
    assert info.value.status == 403
    return info.value


def test_a_botocore_signed_request_is_accepted_as_its_identity():
    who = verify(signed())
    assert who.arn == ALICE
    assert who.access_key == "AKIAALICE"


def test_a_get_with_a_query_string_is_accepted():
    headers = signed("GET", URL + "?scope=mine&limit=100", b"")
    assert verify(headers, method="GET", target="/v1/annexes?scope=mine&limit=100", body=b"").arn == ALICE


def test_a_plain_secret_arn_tuple_is_an_identity():
    assert verify(signed(key="AKIATUPLE", secret="tuple-secret")).arn.endswith("user/tuple")


def test_an_unsigned_request_is_missing_authentication_token():
    err = refused({"Content-Type": "application/json"})
    assert err.body() == {"message": "Missing Authentication Token"}
    assert err.reason == "unsigned"


def test_a_wrong_secret_does_not_match():
    err = refused(signed(secret="guessed"))
    assert err.reason == "bad-signature"
    assert err.error_type == "InvalidSignatureException"
    assert err.body()["message"].startswith("The request signature we calculated does not match")


def test_a_changed_body_does_not_match():
    assert refused(signed(), body=b'{"name":"bio","count":300}').reason == "bad-signature"


def test_a_changed_path_or_method_does_not_match():
    assert refused(signed(), target="/v1/annexes/ax-0123456789abcdef/stop").reason == "bad-signature"
    assert refused(signed(), method="PUT").reason == "bad-signature"


def test_a_body_that_disagrees_with_its_declared_hash_is_refused():
    headers = signed(headers={"X-Amz-Content-SHA256": "0" * 64})
    assert refused(headers).reason == "body-hash"
    assert refused(signed(headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})).reason == "body-hash"


def test_an_unknown_access_key_is_an_invalid_token():
    err = refused(signed(key="AKIANOBODY"))
    assert err.body() == {"message": "The security token included in the request is invalid."}
    assert err.error_type == "UnrecognizedClientException"


@pytest.mark.parametrize(
    ("minutes", "reason", "says"), [(-6, "stale", "Signature expired"), (6, "future", "not yet current")]
)
def test_a_date_more_than_5_minutes_off_is_refused(minutes, reason, says):
    err = refused(signed(at=NOW + timedelta(minutes=minutes)))
    assert err.reason == reason
    assert says in err.message


def test_a_date_within_5_minutes_is_accepted():
    assert verify(signed(at=NOW - timedelta(minutes=4, seconds=50))).arn == ALICE


def test_the_wrong_region_or_service_is_refused():
    assert refused(signed(region="eu-west-1")).message == "Credential should be scoped to a valid region. "
    assert refused(signed(service="s3")).reason == "scope-service"


def test_a_role_session_needs_its_session_token():
    assert verify(signed(key="ASIAROLE", secret="role-secret", token="role-token")).arn == ROLE
    assert refused(signed(key="ASIAROLE", secret="role-secret")).reason == "bad-session-token"
    assert refused(signed(key="ASIAROLE", secret="role-secret", token="stolen")).reason == "bad-session-token"
    assert refused(signed(token="role-token")).reason == "unexpected-session-token"


def test_an_expired_role_session_says_expired():
    headers = signed(key="ASIAROLE", secret="role-secret", token="role-token", at=NOW + timedelta(hours=2))
    err = refused(headers, now=NOW + timedelta(hours=2))
    assert err.body() == {"message": "The security token included in the request is expired"}


def test_a_signed_header_must_be_present_and_host_must_be_signed():
    headers = signed()
    headers.pop("Content-Type")
    assert refused(headers).reason == "absent"
    unsigned_host = signed()
    unsigned_host["Authorization"] = unsigned_host["Authorization"].replace(
        "SignedHeaders=", "SignedHeaders=x;"
    )
    unsigned_host["Authorization"] = unsigned_host["Authorization"].replace("host;", "")
    assert refused(unsigned_host).reason == "host"


def test_an_incomplete_authorization_header_names_what_is_missing():
    err = refused(
        {
            "Authorization": "AWS4-HMAC-SHA256 "
            "Credential=AKIAALICE/20261122/us-east-1/execute-api/aws4_request",
            "X-Amz-Date": "20261122T140000Z",
        }
    )
    assert err.error_type == "IncompleteSignatureException"
    assert "requires 'SignedHeaders' parameter" in err.message
    assert "requires 'Signature' parameter" in err.message


def test_the_tables_entries_can_be_added_while_running():
    table: dict[str, Identity] = {}
    verifier = SigV4Verifier(table, region="us-east-1")
    headers = [("Host", HOST), *signed(key="ASIANEW", secret="new-secret").items()]
    with pytest.raises(SigV4Error):
        verifier.verify("POST", "/v1/annexes", headers, BODY, now=NOW)
    table["ASIANEW"] = Identity("new-secret", ROLE)
    assert verifier.verify("POST", "/v1/annexes", headers, BODY, now=NOW).arn == ROLE
