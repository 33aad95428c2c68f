"""The request function: the public API. Thin: parse into models, call the service, return."""

from __future__ import annotations

from functools import cache
from http import HTTPStatus
from typing import Annotated, Any

from annex import clients
from annex.auth import Caller, caller_from_arn
from annex.clock import utcnow
from annex.config import RequestSettings
from annex.ec2 import Ec2
from annex.errors import (
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
from annex.http import json_only
from annex.models import (
    ANNEX_ID_PATTERN,
    AnnexDetail,
    AnnexList,
    CreateAnnexRequest,
    ErrorBody,
    ErrorField,
    ExtendRequest,
    ExtendResult,
    Health,
    StopRequest,
)
from annex.service import AnnexService
from annex.store import AnnexStore
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
tracer = Tracer()
metrics = Metrics()
app = APIGatewayRestResolver(enable_validation=True)

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
ERRORS: dict[int, OpenAPIResponse] = {
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
AnnexIdParam = Annotated[
    str, Path(pattern=ANNEX_ID_PATTERN, description="An annex id such as ax-0123456789abcdef")
]


@cache
def settings() -> RequestSettings:
    return RequestSettings.from_env()


@cache
def service() -> AnnexService:
    cfg = settings()
    store = AnnexStore(clients.dynamodb(), cfg.table_name)
    return AnnexService(store, Ec2(clients.ec2(), cfg.stack_name), cfg)


def caller() -> Caller:
    identity = app.current_event.request_context.identity
    return caller_from_arn(identity.user_arn, settings().admin_principals)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers
    )


# --- routes -------------------------------------------------------------------------------------


@app.post("/annexes", summary="Request an annex", responses={201: {"description": "Created"}, **ERRORS})
def create_annex(request: Annotated[CreateAnnexRequest, Body()]) -> Response[AnnexDetail]:
    annex, created = service().create(caller(), request, now=utcnow())
    logger.set_correlation_id(annex.id)
    if created:
        metrics.add_metric(name="AnnexesRequested", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="InstancesRequested", unit=MetricUnit.Count, value=annex.count)
    detail = AnnexDetail.model_validate(annex.model_dump())
    return _json(
        HTTPStatus.CREATED if created else HTTPStatus.OK,
        detail.model_dump(mode="json"),
        {"Location": f"/annexes/{annex.id}"},
    )


@app.get("/annexes", summary="List your annexes (administrators: ?scope=all)", responses=ERRORS)
def list_annexes(
    scope: Annotated[str, Query(pattern="^(mine|all)$")] = "mine",
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    next_token: Annotated[str | None, Query(max_length=2048)] = None,
) -> AnnexList:
    return service().list(caller(), everyone=scope == "all", limit=limit, page_token=next_token)


@app.get("/annexes/<annex_id>", summary="One annex with its instances and history", responses=ERRORS)
def get_annex(annex_id: AnnexIdParam) -> AnnexDetail:
    logger.set_correlation_id(annex_id)
    return service().get(caller(), annex_id)


@app.post("/annexes/<annex_id>/extend", summary="Extend the lease", responses=ERRORS)
def extend_annex(annex_id: AnnexIdParam, request: Annotated[ExtendRequest, Body()]) -> ExtendResult:
    logger.set_correlation_id(annex_id)
    result = service().extend(caller(), annex_id, request, now=utcnow())
    metrics.add_metric(name="LeasesExtended", unit=MetricUnit.Count, value=1)
    return result


@app.post("/annexes/<annex_id>/stop", summary="Stop the annex now", responses=ERRORS)
def stop_annex(annex_id: AnnexIdParam, request: Annotated[StopRequest | None, Body()] = None) -> AnnexDetail:
    logger.set_correlation_id(annex_id)
    detail = service().stop(caller(), annex_id, now=utcnow(), reason=request.reason if request else None)
    metrics.add_metric(name="AnnexesStopped", unit=MetricUnit.Count, value=1)
    return detail


@app.get("/health", summary="Limits in force and when each fail-safe sweep last succeeded", responses=ERRORS)
def health() -> Health:
    return service().health(caller())


# --- errors: the one place where domain failures become HTTP ------------------------------------


def _error(status: int, code: str, message: str, fields: list[ErrorField] | None = None) -> Response[Any]:
    return _json(status, ErrorBody(error=code, message=message, fields=fields or []).model_dump(mode="json"))


@app.exception_handler(AnnexError)
def on_domain_error(exc: AnnexError) -> Response[Any]:
    status = next((s for cls, s in STATUS_BY_ERROR.items() if isinstance(exc, cls)), HTTPStatus.BAD_REQUEST)
    fields = [ErrorField(field=exc.field, reason=exc.message)] if exc.field else []
    logger.info("request refused", extra={"error": exc.code, "reason": exc.message})
    return _error(status, exc.code, exc.message, fields)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


@app.exception_handler(RequestValidationError)
def on_validation_error(exc: RequestValidationError) -> Response[Any]:
    errors = exc.errors()
    kinds = {e.get("type") for e in errors}
    if "json_invalid" in kinds:
        return _error(HTTPStatus.BAD_REQUEST, "MalformedJSON", "the request body is not valid JSON")
    if "unsupported_content_type" in kinds:
        return _error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", "send application/json")
    fields = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        reason = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            reason = "unknown field; remove it"
        fields.append(ErrorField(field=_field_name(loc), reason=reason))
    summary = "; ".join(f"{f.field}: {f.reason}" for f in fields)
    return _error(HTTPStatus.UNPROCESSABLE_ENTITY, "ValidationError", f"invalid request: {summary}", fields)


@app.exception_handler(NotFoundError)
def on_not_found(_exc: NotFoundError) -> Response[Any]:
    path = app.current_event.path
    allowed = sorted({r.method for r in (*app._static_routes, *app._dynamic_routes) if r.rule.match(path)})
    if allowed:
        resp = _error(
            HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowed", f"{path} accepts {', '.join(allowed)}"
        )
        resp.headers["Allow"] = ", ".join(allowed)
        return resp
    return _error(HTTPStatus.NOT_FOUND, "NotFound", f"no route {path}; see the API in the README")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@json_only
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
