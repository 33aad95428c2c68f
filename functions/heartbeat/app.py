"""The heartbeat function: POST /heartbeat on the heartbeat HTTP API (IAM authorization, payload format
2.0), called every minute by the agent on each annex instance.
Thin: parse into the model, call the heartbeat service, return its answer.

The hottest path of the stack, so it carries nothing a heartbeat does not need: no X-Ray tracer (the
function's tracing is PassThrough), and no metric per heartbeat (API Gateway's Count and Lambda's
Invocations say the same, free); a refused caller is a metric, since it means a misconfigured or
hostile caller.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Annotated, Any

from annex import coldstart
from annex.api.http import ERROR_RESPONSES, install_error_handlers, strict_input
from annex.aws import clients
from annex.core.clock import utcnow
from annex.core.config import HeartbeatSettings
from annex.core.errors import Forbidden
from annex.core.models import HeartbeatAction, HeartbeatRequest, HeartbeatResponse
from annex.failsafe.heartbeat import HeartbeatService
from annex.store import AnnexStore
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

coldstart.loaded()

logger = Logger()
metrics = Metrics()
app = APIGatewayHttpResolver(enable_validation=True)
install_error_handlers(app, logger)
METRIC_REFUSED = "HeartbeatsRefused"


@cache
def settings() -> HeartbeatSettings:
    return HeartbeatSettings.from_env()


@cache
def service() -> HeartbeatService:
    cfg = settings()
    return HeartbeatService(AnnexStore(clients.dynamodb(), cfg.table_name), cfg)


@app.post(
    "/heartbeat",
    summary="An instance reports its claimed slots; the answer says run, drain or terminate",
    responses=ERROR_RESPONSES,
)
def heartbeat(request: Annotated[HeartbeatRequest, Body()]) -> HeartbeatResponse:
    logger.set_correlation_id(request.annex_id)
    logger.append_keys(instance_id=request.instance_id)
    # IAM authorization on an HTTP API: API Gateway puts the verified caller in authorizer.iam.
    caller_arn = app.current_event.request_context.authorizer.iam.user_arn
    try:
        answer = service().report(caller_arn, request, now=app.context["now"])
    except Forbidden:
        metrics.add_metric(name=METRIC_REFUSED, unit=MetricUnit.Count, value=1)
        logger.warning("heartbeat refused", extra={"caller": caller_arn})
        raise
    if answer.action is not HeartbeatAction.RUN:
        logger.info("instance told to stop", extra={"action": answer.action.value, "reason": answer.reason})
    return answer


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@metrics.log_metrics
@strict_input(app)
def handler(
    event: dict[str, Any], context: LambdaContext, *, clock: Callable[[], datetime] = utcnow
) -> dict[str, Any]:
    # Lambda calls handler(event, context); tests inject the clock the route reads as app.context["now"].
    app.append_context(now=clock())  # type: ignore[no-untyped-call]
    return app.resolve(event, context)
