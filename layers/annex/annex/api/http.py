"""HTTP for the API functions (request, heartbeat): the one place where failures become HTTP, and the
JSON-only gate in front of routing.

Every error answers the same JSON body, `ErrorBody`: a stable code, a message, and the fields at fault.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

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

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver
    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

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
_ERROR_CONTENT: Any = {"application/json": {"schema": ErrorBody.model_json_schema()}}
ERROR_RESPONSES: dict[int, OpenAPIResponse] = {
    400: {"description": "Malformed JSON", "content": _ERROR_CONTENT},
    403: {"description": "Not signed by an IAM identity", "content": _ERROR_CONTENT},
    404: {"description": "No such annex (or it is not yours)", "content": _ERROR_CONTENT},
    409: {
        "description": "Conflicts with the annex's state, a live name, or the quota",
        "content": _ERROR_CONTENT,
    },
    422: {
        "description": "A field is invalid or outside the limits; `fields` names it",
        "content": _ERROR_CONTENT,
    },
}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers
    )


def error_response(
    status: int, code: str, message: str, fields: list[ErrorField] | None = None
) -> Response[Any]:
    body = ErrorBody(error=code, message=message, fields=fields or []).model_dump(mode="json")
    return json_response(status, body)


def status_for(exc: AnnexError) -> HTTPStatus:
    return next((s for cls, s in STATUS_BY_ERROR.items() if isinstance(exc, cls)), HTTPStatus.BAD_REQUEST)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def validation_response(exc: RequestValidationError) -> Response[Any]:
    """A body, query or path that does not fit its model: 422 naming each field, 400 for broken JSON."""
    errors = exc.errors()
    kinds = {e.get("type") for e in errors}
    if "json_invalid" in kinds:
        return error_response(HTTPStatus.BAD_REQUEST, "MalformedJSON", "the request body is not valid JSON")
    if "unsupported_content_type" in kinds:
        return error_response(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", "send application/json"
        )
    fields = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        reason = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            reason = "unknown field; remove it"
        fields.append(ErrorField(field=_field_name(loc), reason=reason))
    summary = "; ".join(f"{f.field}: {f.reason}" for f in fields)
    return error_response(
        HTTPStatus.UNPROCESSABLE_ENTITY, "ValidationError", f"invalid request: {summary}", fields
    )


def install_error_handlers(app: APIGatewayRestResolver, logger: Logger) -> None:
    """Register the shared exception handlers on a resolver: domain errors, validation, 404/405."""

    def on_domain_error(exc: AnnexError) -> Response[Any]:
        fields = [ErrorField(field=exc.field, reason=exc.message)] if exc.field else []
        logger.info("request refused", extra={"error": exc.code, "reason": exc.message})
        return error_response(status_for(exc), exc.code, exc.message, fields)

    def on_not_found(_exc: NotFoundError) -> Response[Any]:
        path = app.current_event.path
        routes = (*app._static_routes, *app._dynamic_routes)
        allowed = sorted({r.method for r in routes if r.rule.match(path)})
        if allowed:
            resp = error_response(
                HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowed", f"{path} accepts {', '.join(allowed)}"
            )
            resp.headers["Allow"] = ", ".join(allowed)
            return resp
        return error_response(HTTPStatus.NOT_FOUND, "NotFound", f"no route {path}; see the API in the README")

    app.exception_handler(AnnexError)(on_domain_error)
    app.exception_handler(RequestValidationError)(validation_response)
    app.exception_handler(NotFoundError)(on_not_found)


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def non_json_refusal(event: dict[str, Any]) -> dict[str, Any] | None:
    """The 415 answer for a body declared as anything but JSON (None: go on)."""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    content_type = headers.get("content-type")
    if not event.get("body") or not content_type or is_json(content_type):
        return None
    error = ErrorBody(
        error="UnsupportedMediaType",
        message=f"send the body as application/json, not {content_type.split(';')[0].strip()}",
    )
    return {
        "statusCode": HTTPStatus.UNSUPPORTED_MEDIA_TYPE.value,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(error.model_dump(mode="json")),
        "isBase64Encoded": False,
    }


def json_only[Handler: Callable[..., dict[str, Any]]](handler: Handler) -> Handler:
    """The API speaks JSON only. Refuse other bodies before routing: Powertools' validation would try to
    parse them as forms or multipart (and a multipart body without a boundary raises)."""

    @wraps(handler)
    def wrapper(event: dict[str, Any], context: Any) -> dict[str, Any]:
        refusal = non_json_refusal(event)
        return refusal if refusal is not None else handler(event, context)

    return wrapper  # type: ignore[return-value]
