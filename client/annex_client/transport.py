"""Signed HTTPS to the Annex API: SigV4 (service `execute-api`) with botocore's credential chain, sent
with the standard library. botocore is slow to import, so it is imported here, when the first request is
signed, and never by `annex-client --help`.

Every expected failure leaves as a `ClientFailure` with a sentence that says what to do.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from annex_client import __version__
from annex_client.errors import (
    ClientFailure,
    ConfigError,
    Refused,
    ServiceFailed,
    Unreachable,
)

SERVICE = "execute-api"
USER_AGENT = f"annex-client/{__version__}"
# 429 means API Gateway did not pass the request on, so any request may be repeated. 5xx may come after
# the function acted, so only idempotent requests are repeated on those.
RETRY_ANY = frozenset({429})
RETRY_IDEMPOTENT = frozenset({502, 503, 504})


class NetworkError(Exception):
    """No HTTP answer. `sent` is False when the request certainly never reached the server; `transient`
    is False when trying again a second later cannot help (nothing listens, the name does not resolve,
    the certificate is not trusted)."""

    def __init__(self, reason: str, *, sent: bool, transient: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.transient = transient


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: Any  # parsed JSON, or None when the body is empty or not JSON
    raw: bytes


# --- the wire (unit tests replace `send`) ---------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect means a wrong endpoint; following it would re-send a signed request elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener: urllib.request.OpenerDirector | None = None


def _describe_reason(reason: object) -> tuple[str, bool, bool]:
    """(a short description, whether the request may have been sent, whether retrying may help)."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing listens there)", False, False
    if isinstance(reason, socket.gaierror):
        return "the host name does not resolve", False, False
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({reason.verify_message})", False, False
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed ({reason})", False, True
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "no answer in time", True, True
    return str(reason) or type(reason).__name__, True, True


def send(
    method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeout: float
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange. Raises NetworkError when there is no HTTP answer."""
    global _opener  # noqa: PLW0603 - built once, on the first request
    if _opener is None:
        _opener = urllib.request.build_opener(_NoRedirect())
    # The scheme is http(s) only: settings.check_endpoint refuses anything else.
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))  # noqa: S310
    try:
        with _opener.open(request, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
    except urllib.error.URLError as err:
        reason, sent, transient = _describe_reason(err.reason)
        raise NetworkError(reason, sent=sent, transient=transient) from None
    except (TimeoutError, socket.timeout):
        raise NetworkError("no answer in time", sent=True) from None
    except (http.client.HTTPException, OSError) as err:
        raise NetworkError(str(err) or type(err).__name__, sent=True) from None


# --- credentials and signing ----------------------------------------------------------------------


class Signer:
    """botocore's credential chain (environment, profiles, SSO, instance roles) and its SigV4 signer."""

    def __init__(self, *, profile: str | None, region: str | None) -> None:
        self.profile = profile
        self._region = region
        self._session: Any = None
        self._credentials: Any = None

    def _load(self) -> Any:
        if self._credentials is not None:
            return self._credentials
        import botocore.exceptions as bx  # noqa: PLC0415 - slow import, deferred until needed
        import botocore.session  # noqa: PLC0415

        try:
            self._session = botocore.session.Session(profile=self.profile)
            credentials = self._session.get_credentials()
        except bx.ProfileNotFound as exc:
            # The profile may come from --profile, the config file, or AWS_PROFILE (read by botocore
            # itself, so self.profile is None then): name the one botocore looked for.
            name = self.profile or getattr(exc, "kwargs", {}).get("profile") or os.environ.get("AWS_PROFILE")
            source = "" if self.profile else " (from AWS_PROFILE)"
            raise ConfigError(
                f"the AWS profile '{name}'{source} is not in your AWS config or credentials file; "
                "list yours with 'aws configure list-profiles' and pass --profile NAME",
                code="ProfileNotFound",
            ) from None
        except (bx.SSOError, bx.TokenRetrievalError):
            raise ConfigError(self._sso_expired(), code="SSOExpired") from None
        except bx.PartialCredentialsError as exc:
            raise ConfigError(
                f"your AWS credentials are incomplete ({exc}); set both the access key and the secret key",
                code="PartialCredentials",
            ) from None
        except (bx.BotoCoreError, bx.ClientError) as exc:
            raise ConfigError(f"could not load your AWS credentials: {exc}", code="Credentials") from None
        if credentials is None:
            raise ConfigError(
                "no AWS credentials found; run 'aws configure' or 'aws sso login --profile NAME' and "
                "pass --profile NAME (on an EC2 head node, attach an instance role)",
                code="NoCredentials",
            )
        self._credentials = credentials
        return credentials

    def _sso_expired(self) -> str:
        who = f" --profile {self.profile}" if self.profile else ""
        return f"your AWS SSO session has expired or was never started; run 'aws sso login{who}' and retry"

    def frozen(self) -> Any:
        import botocore.exceptions as bx  # noqa: PLC0415

        credentials = self._load()
        try:
            return credentials.get_frozen_credentials()  # refreshes SSO / assumed-role credentials
        except (bx.SSOError, bx.TokenRetrievalError):
            raise ConfigError(self._sso_expired(), code="SSOExpired") from None
        except (bx.BotoCoreError, bx.ClientError) as exc:
            raise ConfigError(f"could not refresh your AWS credentials: {exc}", code="Credentials") from None

    @property
    def region(self) -> str:
        if self._region:
            return self._region
        self._load()
        region = self._session.get_config_variable("region")
        if not region:
            raise ConfigError(
                "no AWS region: pass --region, set AWS_REGION, or configure an endpoint URL that "
                "contains it (https://ID.execute-api.REGION.amazonaws.com/v1)",
                code="NoRegion",
            )
        self._region = str(region)
        return self._region

    def describe(self) -> dict[str, str]:
        """How the credentials were found, for check-setup (never the secret)."""
        credentials = self._load()
        key = str(self.frozen().access_key)
        return {
            "method": str(getattr(credentials, "method", "unknown")),
            "access_key": f"{key[:4]}...{key[-4:]}" if len(key) > 8 else key,
            "profile": self.profile or self._session.get_config_variable("profile") or "default",
        }

    def sign(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> dict[str, str]:
        from botocore.auth import SigV4Auth  # noqa: PLC0415
        from botocore.awsrequest import AWSRequest  # noqa: PLC0415

        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        SigV4Auth(self.frozen(), SERVICE, self.region).add_auth(request)
        return {k: str(v) for k, v in request.headers.items()}


# --- turning answers into results or sentences ----------------------------------------------------

_GATEWAY_403 = (
    # (text in API Gateway's message, our code, what to say)
    (
        "security token included in the request is expired",
        "ExpiredToken",
        "your AWS session has expired; refresh your credentials (for SSO: 'aws sso login') and retry",
    ),
    (
        "security token included in the request is invalid",
        "InvalidToken",
        "AWS does not recognise the access key you signed with; check that your credentials are current "
        "and belong to the account that hosts Annex ('annex-client check-setup' shows which you use)",
    ),
    (
        "signature expired",
        "ClockSkew",
        "your computer's clock is more than 5 minutes off; set it right (enable NTP) and retry",
    ),
    (
        "signature not yet current",
        "ClockSkew",
        "your computer's clock is more than 5 minutes off; set it right (enable NTP) and retry",
    ),
    (
        "signature we calculated does not match",
        "BadSignature",
        "the API rejected the request signature: your secret key does not match your access key, or "
        "something between you and AWS changed the request; check your credentials",
    ),
    (
        "scoped to a valid region",
        "WrongRegion",
        "the request was signed for the wrong AWS region; pass --region with the API's region",
    ),
    (
        "not authorized to perform",
        "NotAuthorized",
        "your AWS identity may not call the Annex API; ask your pool administrator to allow "
        "execute-api:Invoke for it ('annex-client check-setup' shows who you are)",
    ),
    (
        "missing authentication token",
        "MissingAuthenticationToken",
        "API Gateway has no such route: check that the endpoint URL ends with the stage, such as /v1",
    ),
)


def _api_error(reply: Reply) -> ClientFailure:
    body = reply.body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        # The Annex API's own error: {error, message, fields: [{field, reason}]}.
        fields = [f for f in body.get("fields") or [] if isinstance(f, dict)]
        message = str(body.get("message") or body["error"])
        if reply.status >= 500:
            return ServiceFailed(f"the Annex API failed: {message}; try again in a minute")
        return Refused(message, status=reply.status, code=body["error"], fields=fields)
    message = ""
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("Message") or "")
    if reply.status == 403:
        lowered = message.lower()
        for needle, code, sentence in _GATEWAY_403:
            if needle in lowered:
                return ConfigError(sentence, code=code)
        first = message.split("\n", 1)[0].strip() or "Forbidden"
        return ConfigError(
            f"API Gateway refused the request ({first}); check the endpoint URL and your credentials",
            code="Forbidden",
        )
    if reply.status == 429:
        return ServiceFailed("the Annex API is throttling requests (HTTP 429); wait a minute and retry")
    if reply.status >= 500:
        said = f": {message}" if message else ""
        return ServiceFailed(
            f"the Annex API failed (HTTP {reply.status}{said}); try again in a minute, and tell your "
            "pool administrator if it persists"
        )
    if 300 <= reply.status < 400:
        where = reply.headers.get("location", "elsewhere")
        return ConfigError(
            f"the endpoint redirects (HTTP {reply.status}) to {where}; configure the final API URL",
            code="Redirect",
        )
    return ConfigError(
        f"the endpoint answered HTTP {reply.status} with something that is not the Annex API; check the "
        "endpoint URL (it ends with the stage, such as /v1)",
        code="NotAnnexApi",
    )


class Transport:
    """Signs, sends, retries what is safe to retry, and raises ClientFailure for anything but 2xx."""

    def __init__(
        self,
        endpoint: str,
        signer: Signer,
        *,
        timeout: float = 30.0,
        attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.signer = signer
        self.timeout = timeout
        self.attempts = attempts
        self.sleep = sleep

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        idempotent: bool = True,
    ) -> Reply:
        """`idempotent=False` (for example extend --by) repeats a request only when it surely never
        arrived. Returns the 2xx reply."""
        url = self.endpoint + path + (f"?{urlencode(sorted(query.items()))}" if query else "")
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        base = {"Accept": "application/json"}
        if payload is not None:
            base["Content-Type"] = "application/json"
        for attempt in range(1, self.attempts + 1):
            headers = self.signer.sign(method, url, dict(base), payload)  # fresh X-Amz-Date each time
            headers["User-Agent"] = USER_AGENT  # unsigned, as botocore leaves it
            try:
                status, reply_headers, raw = send(method, url, headers, payload, self.timeout)
            except NetworkError as exc:
                if exc.transient and attempt < self.attempts and (idempotent or not exc.sent):
                    self.sleep(0.5 * 2 ** (attempt - 1))
                    continue
                raise self._unreachable(exc, idempotent) from None
            reply = Reply(status, reply_headers, _parse_json(raw), raw)
            if 200 <= status < 300:
                return reply
            retryable = status in RETRY_ANY or (idempotent and status in RETRY_IDEMPOTENT)
            if retryable and attempt < self.attempts:
                self.sleep(0.5 * 2 ** (attempt - 1))
                continue
            raise _api_error(reply)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises

    def _unreachable(self, exc: NetworkError, idempotent: bool) -> Unreachable:
        message = f"cannot reach the Annex endpoint {self.endpoint}: {exc.reason}"
        if exc.sent and not idempotent:
            return Unreachable(
                message + "; the request may have arrived, so check with 'annex-client status' before "
                "repeating it"
            )
        return Unreachable(message + "; check the URL ('annex-client configure'), your network or VPN")


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
