"""The strict-input gate in front of every API function (request, heartbeat): what cannot be parsed
safely is refused before routing, with the same `ErrorBody` every error answers.

Free of Powertools' event handler (a resolver is only read for its routes' query parameters), so the
heartbeat, the hottest path, runs it without importing the router.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Collection
from functools import wraps
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from annex.api.answers import error_answer
from annex.core.models import ErrorField

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

# (method, path) -> the query parameters that route takes, or None when no route matches
type QueryParams = Callable[[str, str], Collection[str] | None]

# Every API function (request, heartbeat) runs this before routing. What cannot be parsed safely is
# refused here, before Powertools or pydantic see it: a body too large, not UTF-8, nested too deep,
# with numbers too long or not finite, with duplicate keys; a repeated query parameter, an unknown
# one, a trailing slash. The body that goes on is the canonical JSON of what was checked.

MAX_BODY_BYTES = 128 * 1024  # the largest valid create (20 tags of 128 + 256 escaped characters) fits
MAX_JSON_DEPTH = 8  # the deepest valid body is 2 ({"tags": {...}})
MAX_NUMBER_CHARS = 32  # far beyond any integer a field accepts (count, slots)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
REPLACEMENT_CHARACTER = "\ufffd"


class InputRefused(Exception):
    """A request refused by the gate; `answer()` is its Lambda proxy response."""

    def __init__(self, status: HTTPStatus, code: str, message: str, fields: list[ErrorField] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []

    def answer(self, headers: dict[str, str] | None = None) -> dict[str, Any]:
        error = error_answer(self.status, self.code, self.message, self.fields)
        return {
            "statusCode": self.status.value,
            "headers": {"Content-Type": "application/json", **(headers or {})},
            "body": json.dumps(error.json(), separators=(",", ":")),
            "isBase64Encoded": False,
        }


def _malformed(reason: str, field: str = "body") -> InputRefused:
    return InputRefused(
        HTTPStatus.BAD_REQUEST,
        "MalformedJSON",
        f"the request body is not acceptable JSON: {reason}",
        [ErrorField(field=field, reason=reason)],
    )


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _headers(event: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, values in (event.get("multiValueHeaders") or {}).items():
        out.setdefault(name.lower(), []).extend(str(v) for v in values or [])
    for name, value in (event.get("headers") or {}).items():
        # An HTTP API event joins a repeated header's values with commas; a media type has no comma.
        split = event.get("version") == "2.0" and name.lower() == "content-type"
        out.setdefault(name.lower(), str(value).split(",") if split else [str(value)])
    return out


def _check_content_type(event: dict[str, Any]) -> None:
    content_types_sent = _headers(event).get("content-type", [])
    if len(content_types_sent) > 1:
        raise InputRefused(
            HTTPStatus.BAD_REQUEST,
            "MalformedRequest",
            "send Content-Type once",
            [ErrorField(field="Content-Type", reason="given more than once")],
        )
    if not event.get("body") or not content_types_sent or is_json(content_types_sent[0]):
        return
    raise InputRefused(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        f"send the body as application/json, not {content_types_sent[0].split(';')[0].strip()[:100]}",
    )


def _body_text(event: dict[str, Any]) -> str:
    raw = event.get("body")
    if not isinstance(raw, str):
        raise _malformed("the body is not text")
    if event.get("isBase64Encoded"):
        if len(raw) > MAX_BODY_BYTES * 4 // 3 + 4:
            raise _too_large()
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise _malformed("the body is not valid base64") from None
    else:
        if len(raw) > MAX_BODY_BYTES:
            raise _too_large()
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise _malformed("the body carries a lone surrogate, which is not UTF-8") from None
    if len(data) > MAX_BODY_BYTES:
        raise _too_large()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("the body is not valid UTF-8") from None
    if REPLACEMENT_CHARACTER in text:
        # API Gateway hands a REST function bytes that are not UTF-8 as U+FFFD: refuse them as such.
        raise _malformed("the body is not valid UTF-8 (it carries U+FFFD, the mark of bytes that were not)")
    return text


def _too_large() -> InputRefused:
    return InputRefused(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        "PayloadTooLarge",
        f"the request body may be at most {MAX_BODY_BYTES // 1024} KiB",
    )


def _check_depth(text: str) -> None:
    depth = 0
    for match in _BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise _malformed(f"nested more than {MAX_JSON_DEPTH} levels deep")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _malformed(f"the key '{key[:40]}' appears twice in one object", field=key[:128])
        out[key] = value
    return out


def _integer(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _malformed(f"a number longer than {MAX_NUMBER_CHARS} characters")
    return int(text)


def _real(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _malformed(f"a number longer than {MAX_NUMBER_CHARS} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _malformed(f"the number {text[:40]} is out of range")
    return value


def _not_a_number(name: str) -> Any:
    raise _malformed(f"{name} is not JSON (numbers must be finite)")


def _check_strings(value: Any) -> None:
    """Escaped lone surrogates (`"\\ud800"`) parse into strings that are not Unicode text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _malformed("a string carries a lone surrogate (\\ud800-\\udfff)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def parse_json_strictly(text: str) -> Any:
    """JSON as RFC 8259 means it, bounded: no NaN/Infinity, no duplicate keys, no lone surrogates,
    numbers of at most MAX_NUMBER_CHARS characters, at most MAX_JSON_DEPTH levels deep."""
    _check_depth(text)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=_integer,
            parse_float=_real,
            parse_constant=_not_a_number,
        )
    except InputRefused:
        raise
    except (ValueError, RecursionError):
        raise _malformed("it does not parse") from None
    _check_strings(value)
    return value


def route_path(event: dict[str, Any]) -> str:
    """The path routes match: a REST event's `path`; an HTTP API (payload 2.0) event's `rawPath` without
    its stage, which API Gateway keeps in `rawPath` on a named stage."""
    if event.get("version") != "2.0":
        return str(event.get("path") or "/")
    raw = str(event.get("rawPath") or "/")
    stage = str((event.get("requestContext") or {}).get("stage") or "$default")
    if stage != "$default" and (raw == f"/{stage}" or raw.startswith(f"/{stage}/")):
        return raw[len(stage) + 1 :] or "/"
    return raw


def _query_values(event: dict[str, Any]) -> dict[str, list[str]]:
    """Every value of every query parameter. An HTTP API event joins repeated values with commas in
    `queryStringParameters`, so they are read from `rawQueryString`."""
    if event.get("version") == "2.0":
        multi: dict[str, list[str]] = {}
        for name, value in parse_qsl(str(event.get("rawQueryString") or ""), keep_blank_values=True):
            multi.setdefault(name, []).append(value)
        return multi
    multi = dict(event.get("multiValueQueryStringParameters") or {})
    for name, value in (event.get("queryStringParameters") or {}).items():
        multi.setdefault(name, [value])
    return multi


def _check_path(event: dict[str, Any]) -> None:
    path = route_path(event)
    if path != "/" and (path.endswith("/") or "//" in path):
        raise InputRefused(
            HTTPStatus.NOT_FOUND,
            "NotFound",
            f"no route {path[:200]}; paths have no empty segments and no trailing slash",
        )


def _check_query(event: dict[str, Any], query_params: QueryParams | None) -> None:
    multi = _query_values(event)
    repeated = [
        ErrorField(field=k[:128], reason="given more than once; give it once")
        for k, v in multi.items()
        if len(v or []) > 1
    ]
    if repeated:
        raise InputRefused(
            HTTPStatus.BAD_REQUEST,
            "MalformedQuery",
            "each query parameter may be given once: " + ", ".join(f.field for f in repeated),
            repeated,
        )
    if query_params is None or not multi:
        return
    method = str(
        event.get("httpMethod") or (event.get("requestContext") or {}).get("http", {}).get("method") or ""
    )
    known = query_params(method.upper(), route_path(event))
    if known is None:
        return  # routing answers 404/405
    unknown = [
        ErrorField(field=k[:128], reason="unknown query parameter; remove it")
        for k in multi
        if k not in known
    ]
    if unknown:
        raise InputRefused(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "ValidationError",
            "invalid request: " + "; ".join(f"{f.field}: {f.reason}" for f in unknown),
            unknown,
        )


def resolver_query_params(resolver: ApiGatewayResolver) -> QueryParams:
    """The query parameters a Powertools resolver's routes take, read from its routes."""

    def known(method: str, path: str) -> Collection[str] | None:
        routes = [
            r
            for r in (*resolver._static_routes, *resolver._dynamic_routes)
            if r.method == method and r.rule.match(path)
        ]
        return {p.alias for r in routes for p in r.dependant.query_params} if routes else None

    return known


def checked_event(event: dict[str, Any], query_params: QueryParams | None = None) -> dict[str, Any]:
    """The event to route, with its body replaced by the canonical JSON of what was checked.
    `query_params(method, path)` names the query parameters the route takes (None: no such route).
    Raises InputRefused."""
    _check_path(event)
    _check_query(event, query_params)
    _check_content_type(event)
    if event.get("body") in (None, ""):
        return {**event, **_json_headers(event, body=False)}
    parsed = parse_json_strictly(_body_text(event))
    if not isinstance(parsed, dict):
        reason = "the body must be a JSON object (or absent where the route allows)"
        raise InputRefused(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "ValidationError",
            f"invalid request: body: {reason}",
            [ErrorField(field="body", reason=reason)],
        )
    return {**event, **_json_headers(event, body=True), "body": json.dumps(parsed), "isBase64Encoded": False}


def _json_headers(event: dict[str, Any], *, body: bool) -> dict[str, Any]:
    """The event's headers with one canonical Content-Type: `application/json` for the checked body, none
    without a body. Behind the gate, Powertools' validation reads a body only under a media type that
    starts with `application/json` (case and all), so `application/merge-patch+json` or `Application/JSON`,
    which the gate accepts as JSON, would reach it as unsupported; and a bodiless request's declared type
    says nothing."""
    out: dict[str, Any] = {}
    for key, canonical in (("headers", "application/json"), ("multiValueHeaders", ["application/json"])):
        headers = event.get(key)
        if headers is None:
            continue
        kept = {name: value for name, value in headers.items() if name.lower() != "content-type"}
        if body:
            kept["Content-Type"] = canonical
        out[key] = kept
    return out


def strict_input[Handler: Callable[..., dict[str, Any]]](
    resolver: ApiGatewayResolver | None = None, *, query_params: QueryParams | None = None
) -> Callable[[Handler], Handler]:
    """The one gate in front of every API function: refuse what cannot be parsed safely, before
    routing (Powertools would try to parse other content types as forms or multipart, and Python's JSON
    parser recurses, accepts NaN and keeps the last of duplicate keys). The query parameters a route
    takes come from `resolver`'s routes, or from `query_params` where there is no resolver."""
    known = resolver_query_params(resolver) if resolver is not None else query_params

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        def wrapper(event: dict[str, Any], context: Any, **kwargs: Any) -> dict[str, Any]:
            try:
                checked = checked_event(event, known)
            except InputRefused as refusal:
                return refusal.answer()
            return handler(checked, context, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
