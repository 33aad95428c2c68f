"""Failures as HTTP answers: the one place where a domain error, a request that does not fit its model,
or a route that does not exist becomes a status and an `ErrorBody` (a stable code, a message, the fields
at fault).

Free of Powertools' event handler, so the heartbeat (the hottest path) can use it without importing the
router: the request API's Powertools exception handlers (`annex.api.http`) and the heartbeat's thin
adapter (`functions/heartbeat/app.py`) both shape their errors here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from annex.core.errors import (
    AnnexError,
    AnnexNotFound,
    ConcurrentUpdate,
    Forbidden,
    LeaseConflict,
    NameInUse,
    PolicyViolation,
    QuotaExceeded,
    TokenReused,
)
from annex.core.models import ErrorBody, ErrorField

STATUS_BY_ERROR: dict[type[AnnexError], HTTPStatus] = {
    AnnexNotFound: HTTPStatus.NOT_FOUND,
    NameInUse: HTTPStatus.CONFLICT,
    QuotaExceeded: HTTPStatus.CONFLICT,
    LeaseConflict: HTTPStatus.CONFLICT,
    ConcurrentUpdate: HTTPStatus.CONFLICT,
    TokenReused: HTTPStatus.CONFLICT,
    PolicyViolation: HTTPStatus.UNPROCESSABLE_ENTITY,
    Forbidden: HTTPStatus.FORBIDDEN,
}
# Where a request's values come from, as validation errors locate them; not part of a field's name.
_SOURCES = ("body", "query", "path")


@dataclass(frozen=True)
class ErrorAnswer:
    """A failure as HTTP: its status, its `ErrorBody`, and any header it needs (`Allow` on a 405)."""

    status: HTTPStatus
    body: ErrorBody
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return self.body.model_dump(mode="json")


def error_answer(
    status: HTTPStatus, code: str, message: str, fields: list[ErrorField] | None = None
) -> ErrorAnswer:
    return ErrorAnswer(status, ErrorBody(error=code, message=message, fields=fields or []))


def status_for(exc: AnnexError) -> HTTPStatus:
    return next((s for cls, s in STATUS_BY_ERROR.items() if isinstance(exc, cls)), HTTPStatus.BAD_REQUEST)


def domain_error(exc: AnnexError) -> ErrorAnswer:
    """A refusal by the domain (not found, conflict, policy, forbidden): its status and code, and the
    field at fault when it names one."""
    fields = [ErrorField(field=exc.field, reason=exc.message)] if exc.field else []
    return error_answer(status_for(exc), exc.code, exc.message, fields)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in _SOURCES]
    return ".".join(parts) or "body"


def validation_error(errors: Iterable[Mapping[str, Any]]) -> ErrorAnswer:
    """A body, query or path that does not fit its model (pydantic's error list, each `loc` starting
    with where the value came from, as Powertools reports it): 422 naming each field; 400 for broken
    JSON, 415 for a body that is not JSON."""
    errors = list(errors)
    kinds = {e.get("type") for e in errors}
    if "json_invalid" in kinds:
        return error_answer(HTTPStatus.BAD_REQUEST, "MalformedJSON", "the request body is not valid JSON")
    if "unsupported_content_type" in kinds:
        return unsupported_media_type()
    fields = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        reason = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            reason = "unknown field; remove it"
        fields.append(ErrorField(field=_field_name(loc), reason=reason))
    summary = "; ".join(f"{f.field}: {f.reason}" for f in fields)
    return error_answer(
        HTTPStatus.UNPROCESSABLE_ENTITY, "ValidationError", f"invalid request: {summary}", fields
    )


def unsupported_media_type() -> ErrorAnswer:
    return error_answer(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", "send application/json")


def no_route(path: str, allowed: Iterable[str]) -> ErrorAnswer:
    """No route for this method and path: 405 with `Allow` when the path takes other methods, else 404."""
    methods = sorted(set(allowed))
    if methods:
        answer = error_answer(
            HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowed", f"{path} accepts {', '.join(methods)}"
        )
        return ErrorAnswer(answer.status, answer.body, {"Allow": ", ".join(methods)})
    return error_answer(HTTPStatus.NOT_FOUND, "NotFound", f"no route {path}; see the API in the README")


def http_api_response(
    status: HTTPStatus, body: Any, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A JSON answer in the HTTP API's (payload format 2.0) response format, as Powertools'
    `APIGatewayHttpResolver` writes it: compact JSON, `Content-Type` first, no cookies."""
    return {
        "statusCode": status.value,
        "body": json.dumps(body, separators=(",", ":")),
        "isBase64Encoded": False,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "cookies": [],
    }
