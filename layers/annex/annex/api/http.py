"""HTTP for the request function's Powertools resolver: its exception handlers (domain errors, validation,
404/405), shaped by `annex.api.answers`, and the error responses its OpenAPI document declares.

The strict-input gate in front of routing is `annex.api.gate` (re-exported here as `strict_input`).
Every error answers the same JSON body, `ErrorBody`: a stable code, a message, and the fields at fault.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from annex.api.answers import ErrorAnswer, domain_error, no_route, validation_error
from annex.api.gate import strict_input
from annex.core.errors import AnnexError
from annex.core.models import ErrorBody

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

__all__ = ["ERROR_RESPONSES", "install_error_handlers", "json_response", "strict_input"]

_ERROR_CONTENT: Any = {"application/json": {"schema": ErrorBody.model_json_schema()}}
ERROR_RESPONSES: dict[int, OpenAPIResponse] = {
    400: {
        "description": "Malformed: not UTF-8 JSON, nested too deep, a number too long or not finite, a "
        "duplicate key, a repeated query parameter",
        "content": _ERROR_CONTENT,
    },
    403: {"description": "Not signed by an IAM identity", "content": _ERROR_CONTENT},
    404: {"description": "No such annex (or it is not yours)", "content": _ERROR_CONTENT},
    409: {
        "description": "Conflicts with the annex's state, a live name, or the quota",
        "content": _ERROR_CONTENT,
    },
    413: {"description": "The body is larger than 128 KiB", "content": _ERROR_CONTENT},
    415: {"description": "The body is not application/json", "content": _ERROR_CONTENT},
    422: {
        "description": "A field is invalid, unknown or outside the limits; `fields` names it",
        "content": _ERROR_CONTENT,
    },
}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers
    )


def _response(answer: ErrorAnswer) -> Response[Any]:
    resp = json_response(answer.status, answer.json())
    resp.headers.update(answer.headers)
    return resp


def install_error_handlers(app: ApiGatewayResolver, logger: Logger) -> None:
    """Register the shared exception handlers on a resolver: domain errors, validation, 404/405."""

    def on_domain_error(exc: AnnexError) -> Response[Any]:
        logger.info("request refused", extra={"error": exc.code, "reason": exc.message})
        return _response(domain_error(exc))

    def on_not_found(_exc: NotFoundError) -> Response[Any]:
        path = app.current_event.path
        routes = (*app._static_routes, *app._dynamic_routes)
        return _response(no_route(path, (r.method for r in routes if r.rule.match(path))))

    def on_invalid(exc: RequestValidationError) -> Response[Any]:
        return _response(validation_error(exc.errors()))

    app.exception_handler(AnnexError)(on_domain_error)
    app.exception_handler(RequestValidationError)(on_invalid)
    app.exception_handler(NotFoundError)(on_not_found)
