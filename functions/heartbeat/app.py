"""The heartbeat function: POST /heartbeat on the heartbeat HTTP API (IAM authorization, payload format
2.0), called every minute by the agent on each annex instance.
Thin: parse into the model, call the heartbeat service, return its answer.

The hottest path of the stack, so it carries nothing a heartbeat does not need: no X-Ray tracer (the
function's tracing is PassThrough), and no metric per heartbeat (API Gateway's Count and Lambda's
Invocations say the same, free); a refused caller is a metric, since it means a misconfigured or
hostile caller. Nor Powertools' event handler: for one route on its own API, the router and its OpenAPI
machinery were a fifth of every cold start (and 1,000 instances booting together start many at once).
`route` below does what `APIGatewayHttpResolver(enable_validation=True)` did for this route, and its
errors are shaped where the request API's are (`annex.api.answers`), so both APIs answer alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import cache
from http import HTTPStatus
from typing import Any

from annex import coldstart
from annex.api.answers import ErrorAnswer, domain_error, http_api_response, no_route, validation_error
from annex.api.gate import route_path, strict_input
from annex.aws import clients
from annex.core.clock import utcnow
from annex.core.config import HeartbeatSettings
from annex.core.errors import AnnexError, Forbidden
from annex.core.models import HeartbeatAction, HeartbeatRequest, HeartbeatResponse
from annex.failsafe.heartbeat import HeartbeatService
from annex.store import AnnexStore
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

coldstart.loaded()

logger = Logger()
metrics = Metrics()
METRIC_REFUSED = "HeartbeatsRefused"
METHOD, PATH = "POST", "/heartbeat"


@cache
def settings() -> HeartbeatSettings:
    return HeartbeatSettings.from_env()


@cache
def service() -> HeartbeatService:
    cfg = settings()
    return HeartbeatService(AnnexStore(clients.dynamodb(), cfg.table_name), cfg)


def heartbeat(request: HeartbeatRequest, caller_arn: str, *, now: datetime) -> HeartbeatResponse:
    """An instance reports its claimed slots; the answer says run, drain or terminate."""
    logger.set_correlation_id(request.annex_id)
    logger.append_keys(instance_id=request.instance_id)
    try:
        answer = service().report(caller_arn, request, now=now)
    except Forbidden:
        metrics.add_metric(name=METRIC_REFUSED, unit=MetricUnit.Count, value=1)
        logger.warning("heartbeat refused", extra={"caller": caller_arn})
        raise
    if answer.action is not HeartbeatAction.RUN:
        logger.info("instance told to stop", extra={"action": answer.action.value, "reason": answer.reason})
    return answer


def route(event: dict[str, Any], *, now: datetime) -> dict[str, Any]:
    """The one route of a checked HTTP API event: 405/404 for another method or path, 422 naming each
    field for a body that does not fit HeartbeatRequest, the domain's refusals as the request API
    answers them; anything else (a store failure) propagates, so Lambda reports it and API Gateway
    answers 500."""
    method = str(event["requestContext"]["http"]["method"]).upper()
    path = route_path(event)
    if (method, path) != (METHOD, PATH):
        return _answer(no_route(path, [METHOD] if path == PATH else []))
    body = json.loads(event["body"]) if event.get("body") else None
    if body is None:  # as Powertools reports a missing body
        return _answer(validation_error([{"type": "missing", "loc": ("body",), "msg": "Field required"}]))
    try:
        request = HeartbeatRequest.model_validate(body)
    except ValidationError as exc:
        return _answer(validation_error({**e, "loc": ("body", *e["loc"])} for e in exc.errors()))
    # IAM authorization on an HTTP API: API Gateway puts the verified caller in authorizer.iam.
    iam = (event["requestContext"].get("authorizer") or {}).get("iam") or {}
    try:
        answer = heartbeat(request, str(iam.get("userArn") or ""), now=now)
    except AnnexError as exc:
        logger.info("request refused", extra={"error": exc.code, "reason": exc.message})
        return _answer(domain_error(exc))
    return http_api_response(HTTPStatus.OK, answer.model_dump(mode="json", by_alias=True))


def _answer(error: ErrorAnswer) -> dict[str, Any]:
    return http_api_response(error.status, error.json(), error.headers)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@metrics.log_metrics
@strict_input(query_params=lambda method, path: () if (method, path) == (METHOD, PATH) else None)
def handler(
    event: dict[str, Any], context: LambdaContext, *, clock: Callable[[], datetime] = utcnow
) -> dict[str, Any]:
    # Lambda calls handler(event, context); tests inject the clock.
    return route(event, now=clock())
