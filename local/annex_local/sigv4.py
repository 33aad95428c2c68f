"""Verify AWS Signature Version 4 requests as API Gateway does for an AWS_IAM route, using botocore's own
canonicalization and signing key derivation (botocore.auth.SigV4Auth), so the local stack checks
signatures exactly the way AWS clients compute them.

An identity table maps access keys to their secret and IAM ARN (and, for role sessions, the session
token). It is an ordinary mutable mapping owned by the caller, so the local stack can add a role session
per instance while the gateway runs.

Failures raise SigV4Error carrying API Gateway's status, `x-amzn-ErrorType` and message body.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

ALGORITHM = "AWS4-HMAC-SHA256"
AMZ_DATE = "%Y%m%dT%H%M%SZ"
MAX_SKEW = timedelta(minutes=5)
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_AUTH_PARAM = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]+)")


class Identity(NamedTuple):
    """One principal the local stack knows. A plain `(secret, arn)` tuple works too."""

    secret_key: str
    arn: str
    session_token: str | None = None  # required for role sessions (temporary credentials)
    expires_at: datetime | None = None  # after this, API Gateway says the token is expired


@dataclass(frozen=True)
class Verified:
    access_key: str
    arn: str
    region: str
    signed_at: datetime


class SigV4Error(Exception):
    """A request API Gateway would refuse before reaching the function."""

    def __init__(self, message: str, *, error_type: str, reason: str, status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type  # API Gateway's x-amzn-ErrorType
        self.reason = reason  # a short code for logs and tests: unsigned, unknown-key, bad-signature, ...
        self.status = status

    def body(self) -> dict[str, str]:
        # API Gateway spells the key "Message" for IAM authorization denials, "message" otherwise.
        key = "Message" if self.error_type == "AccessDeniedException" else "message"
        return {key: self.message}


def _incomplete(message: str, reason: str) -> SigV4Error:
    return SigV4Error(message, error_type="IncompleteSignatureException", reason=reason)


def _invalid_signature(message: str, reason: str) -> SigV4Error:
    return SigV4Error(message, error_type="InvalidSignatureException", reason=reason)


def _bad_token(reason: str) -> SigV4Error:
    return SigV4Error(
        "The security token included in the request is invalid.",
        error_type="UnrecognizedClientException",
        reason=reason,
    )


class _Canonicalizer(SigV4Auth):
    """botocore's SigV4 with the header set fixed to what the client says it signed."""

    def __init__(self, credentials: Credentials, service: str, region: str, signed: HTTPHeaders) -> None:
        super().__init__(credentials, service, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._signed


def _parse_authorization(value: str) -> dict[str, str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(
            f"Authorization header requires '{ALGORITHM}' as its algorithm. Authorization={value[:80]}",
            "algorithm",
        )
    params = dict(_AUTH_PARAM.findall(rest))
    missing = [p for p in ("Credential", "SignedHeaders", "Signature") if p not in params]
    if missing:
        raise _incomplete(
            " ".join(f"Authorization header requires '{p}' parameter." for p in missing)
            + f" Authorization={value[:80]}",
            "incomplete",
        )
    return params


def _first(lookup: Mapping[str, list[str]], name: str) -> str | None:
    values = lookup.get(name)
    return values[0] if values else None


def _header_lookup(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.lower(), []).append(value)
    return out


class SigV4Verifier:
    def __init__(
        self,
        identities: Mapping[str, Identity | tuple[str, str] | tuple[str, str, str]],
        *,
        region: str,
        service: str = "execute-api",
        max_skew: timedelta = MAX_SKEW,
    ) -> None:
        self.identities = identities
        self.region = region
        self.service = service
        self.max_skew = max_skew

    def _identity(self, access_key: str) -> Identity | None:
        found = self.identities.get(access_key)
        if found is None or isinstance(found, Identity):
            return found
        return Identity(*found)

    def verify(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        now: datetime | None = None,
        scheme: str = "http",
    ) -> Verified:
        """`target` is the request target as received (path and query, still percent-encoded)."""
        now = now or datetime.now(UTC)
        lookup = _header_lookup(headers)
        authorization = _first(lookup, "authorization")
        if not authorization:
            raise SigV4Error(
                "Missing Authentication Token",
                error_type="MissingAuthenticationTokenException",
                reason="unsigned",
            )
        params = _parse_authorization(authorization)
        amz_date = _first(lookup, "x-amz-date")
        if not amz_date:
            raise _incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
                f"Authorization={authorization[:80]}",
                "no-date",
            )
        try:
            signed_at = datetime.strptime(amz_date, AMZ_DATE).replace(tzinfo=UTC)
        except ValueError:
            raise _incomplete(
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See "
                "http://en.wikipedia.org/wiki/ISO_8601",
                "bad-date",
            ) from None
        self._check_skew(signed_at, now)
        access_key = self._check_scope(params["Credential"], amz_date)
        signed_names = self._check_signed_headers(params["SignedHeaders"], lookup)
        identity = self._check_identity(access_key, _first(lookup, "x-amz-security-token"), now)

        declared = _first(lookup, "x-amz-content-sha256")
        if declared is not None and declared != hashlib.sha256(body).hexdigest():
            # UNSIGNED-PAYLOAD included: API Gateway signs what it receives, so the body must be covered.
            raise self._mismatch("body-hash", " (the body does not match x-amz-content-sha256)")

        signed = HTTPHeaders()
        for name in signed_names:
            for value in lookup[name]:
                signed[name] = value
        # botocore hashes the body itself (equal to any declared x-amz-content-sha256, checked above).
        request = AWSRequest(method=method.upper(), url=f"{scheme}://{lookup['host'][0]}{target}", data=body)
        request.context["timestamp"] = amz_date
        signer = _Canonicalizer(
            Credentials(access_key, identity.secret_key, identity.session_token),
            self.service,
            self.region,
            signed,
        )
        canonical = signer.canonical_request(request)
        string_to_sign = signer.string_to_sign(request, canonical)
        expected = signer.signature(string_to_sign, request)
        if not hmac.compare_digest(expected.encode(), params["Signature"].encode()):
            raise self._mismatch(
                "bad-signature",
                f"\n\nThe Canonical String for this request should have been\n'{canonical}'\n\n"
                f"The String-to-Sign should have been\n'{string_to_sign}'\n",
            )
        return Verified(access_key=access_key, arn=identity.arn, region=self.region, signed_at=signed_at)

    def _check_scope(self, credential: str, amz_date: str) -> str:
        """The access key, once the credential scope names this date, region and service."""
        access_key, _, scope = credential.partition("/")
        parts = scope.split("/")
        if len(parts) != 4 or not access_key:
            raise _incomplete(f"Credential scope is malformed: '{credential}'.", "bad-scope")
        date, region, service, terminator = parts
        if date != amz_date[:8]:
            raise _invalid_signature(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"'{date}' != '{amz_date[:8]}', from '{amz_date}'.",
                "scope-date",
            )
        if region != self.region:
            raise _invalid_signature("Credential should be scoped to a valid region. ", "scope-region")
        if service != self.service:
            raise _invalid_signature(
                f"Credential should be scoped to correct service: '{self.service}'. ", "scope-service"
            )
        if terminator != "aws4_request":
            raise _invalid_signature(
                f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'. ",
                "scope-terminator",
            )
        return access_key

    @staticmethod
    def _check_signed_headers(value: str, lookup: Mapping[str, list[str]]) -> list[str]:
        names = [n.strip().lower() for n in value.split(";") if n.strip()]
        if "host" not in names:
            raise _invalid_signature(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.", "host"
            )
        absent = [n for n in names if n not in lookup]
        if absent:
            raise _invalid_signature(
                f"The request does not carry the signed header(s) {', '.join(absent)}.", "absent"
            )
        return names

    def _check_identity(self, access_key: str, token: str | None, now: datetime) -> Identity:
        identity = self._identity(access_key)
        if identity is None:
            raise _bad_token("unknown-key")
        if identity.session_token is None:
            if token is not None:
                raise _bad_token("unexpected-session-token")
            return identity
        if token is None or not hmac.compare_digest(token.encode(), identity.session_token.encode()):
            raise _bad_token("bad-session-token")
        if identity.expires_at is not None and now >= identity.expires_at:
            raise SigV4Error(
                "The security token included in the request is expired",
                error_type="ExpiredTokenException",
                reason="expired-token",
            )
        return identity

    def _check_skew(self, signed_at: datetime, now: datetime) -> None:
        stamp = now.strftime(AMZ_DATE)
        if signed_at < now - self.max_skew:
            raise _invalid_signature(
                f"Signature expired: {signed_at.strftime(AMZ_DATE)} is now earlier than "
                f"{(now - self.max_skew).strftime(AMZ_DATE)} ({stamp} - 5 min.)",
                "stale",
            )
        if signed_at > now + self.max_skew:
            raise _invalid_signature(
                f"Signature not yet current: {signed_at.strftime(AMZ_DATE)} is still later than "
                f"{(now + self.max_skew).strftime(AMZ_DATE)} ({stamp} + 5 min.)",
                "future",
            )

    @staticmethod
    def _mismatch(reason: str, detail: str) -> SigV4Error:
        return _invalid_signature(
            "The request signature we calculated does not match the signature you provided. Check your AWS "
            "Secret Access Key and signing method. Consult the service documentation for details." + detail,
            reason,
        )


def sign_headers(
    method: str,
    url: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    session_token: str | None = None,
    service: str = "execute-api",
) -> dict[str, Any]:
    """Sign a request with botocore (for simulated instances and tests of the local stack)."""
    request = AWSRequest(method=method, url=url, data=body or None, headers=dict(headers or {}))
    SigV4Auth(Credentials(access_key, secret_key, session_token), service, region).add_auth(request)
    return dict(request.headers.items())
