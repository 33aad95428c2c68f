"""The request function: the public API. Thin: parse into models, call the service, return."""

from __future__ import annotations

from functools import cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from annex import coldstart
from annex.api import pagetoken
from annex.api.http import ERROR_RESPONSES as ERRORS
from annex.api.http import install_error_handlers, json_response, strict_input
from annex.api.service import AnnexService
from annex.aws import clients
from annex.core.auth import Caller, caller_from_arn
from annex.core.clock import utcnow
from annex.core.config import RequestSettings
from annex.core.models import (
    ANNEX_ID_PATTERN,
    Annex,
    AnnexDetail,
    CreateAnnexRequest,
    ExtendRequest,
    Health,
    IdleTimeoutRequest,
    ShortenRequest,
    StopRequest,
)
from annex.money.models import (
    MONTH_PATTERN,
    AnnexListView,
    AnnexView,
    BudgetRequest,
    EstimateRequest,
    ExtendView,
    NotificationRequest,
    NotificationSubscription,
    OwnerBudget,
    OwnerBudgetRequest,
    Quote,
    SpendReport,
)
from annex.store import AnnexStore
from annex.store.annexes import HISTORY_PAGE
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

if TYPE_CHECKING:
    from annex.aws.inventory import Ec2Inventory
    from annex.failsafe.lease_timer import TimerQueue

coldstart.loaded()

logger = Logger()
metrics = Metrics()
app = APIGatewayRestResolver(enable_validation=True)

install_error_handlers(app, logger)

AnnexIdParam = Annotated[
    str, Path(pattern=ANNEX_ID_PATTERN, description="An annex id such as ax-0123456789abcdef")
]


@cache
def settings() -> RequestSettings:
    return RequestSettings.from_env()


def ec2_inventory() -> Ec2Inventory:
    from annex.aws.inventory import Ec2Inventory  # noqa: PLC0415 - cold start: extend/shorten/stop only

    cfg = settings()
    return Ec2Inventory(clients.ec2(), cfg.stack_name, instance_profile_arn=cfg.instance_profile_arn)


def timer_queue() -> TimerQueue | None:
    from annex.failsafe.lease_timer import TimerQueue  # noqa: PLC0415 - cold start: create/extend/shorten only

    url = settings().lease_timer_queue_url
    return TimerQueue(clients.client("sqs"), url) if url else None


@cache
def service() -> AnnexService:
    """The store now; EC2, SNS and the timer queue when a route first needs them (their clients are the
    costly part of a first request, and listing, reading or creating an annex needs none of them)."""
    cfg = settings()
    store = AnnexStore(clients.dynamodb(), cfg.table_name)
    return AnnexService(store, ec2_inventory, cfg, sns=lambda: clients.client("sns"), timers=timer_queue)


@cache
def page_token_key() -> pagetoken.PageTokenKey:
    """The stack's page-token key, read once per container (the same in every container)."""
    return pagetoken.PageTokenKey(service().store.page_token_key)


def caller() -> Caller:
    identity = app.current_event.request_context.identity
    return caller_from_arn(identity.user_arn, settings().identity)


# --- routes -------------------------------------------------------------------------------------


@app.post("/annexes", summary="Request an annex", responses={201: {"description": "Created"}, **ERRORS})
def create_annex(request: Annotated[CreateAnnexRequest, Body()]) -> Response[AnnexDetail]:
    annex, created = service().create(caller(), request, now=utcnow())
    logger.set_correlation_id(annex.id)
    if created:
        metrics.add_metric(name="AnnexesRequested", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="InstancesRequested", unit=MetricUnit.Count, value=annex.count)
    detail = AnnexDetail.model_validate(annex.model_dump())
    return json_response(
        HTTPStatus.CREATED if created else HTTPStatus.OK,
        detail.model_dump(mode="json"),
        {"Location": f"/annexes/{annex.id}"},
    )


@app.get("/annexes", summary="List your annexes (administrators: ?scope=all)", responses=ERRORS)
def list_annexes(
    scope: Annotated[str, Query(pattern="^(mine|all)$")] = "mine",
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    next_token: Annotated[str | None, Query(max_length=2048)] = None,
) -> AnnexListView:
    who = caller()
    binding = f"{who.arn}\n{scope}"  # a token works only for the caller and the scope it was issued for
    inner = page_token_key().unseal(next_token, binding=binding)
    listing = service().list(who, everyone=scope == "all", limit=limit, page_token=inner, now=utcnow())
    sealed = page_token_key().seal(listing.next_token, binding=binding)
    return listing.model_copy(update={"next_token": sealed})


@app.get("/annexes/<annex_id>", summary="One annex, its instances and its history (paged)", responses=ERRORS)
def get_annex(
    annex_id: AnnexIdParam,
    history_limit: Annotated[int, Query(ge=1, le=100)] = HISTORY_PAGE,
    history_next_token: Annotated[str | None, Query(max_length=2048)] = None,
) -> AnnexView:
    logger.set_correlation_id(annex_id)
    who = caller()
    binding = f"{who.arn}\nhistory\n{annex_id}"  # valid only for this caller and this annex's history
    keys = page_token_key()
    inner = keys.unseal(history_next_token, binding=binding, field="history_next_token")
    view = service().get(who, annex_id, now=utcnow(), history_limit=history_limit, history_token=inner)
    return view.model_copy(update={"history_next_token": keys.seal(view.history_next_token, binding=binding)})


@app.post("/annexes/<annex_id>/extend", summary="Extend the lease", responses=ERRORS)
def extend_annex(annex_id: AnnexIdParam, request: Annotated[ExtendRequest, Body()]) -> ExtendView:
    logger.set_correlation_id(annex_id)
    result = service().extend(caller(), annex_id, request, now=utcnow())
    metrics.add_metric(name="LeasesExtended", unit=MetricUnit.Count, value=1)
    return result


@app.post("/annexes/<annex_id>/shorten", summary="End the lease earlier", responses=ERRORS)
def shorten_annex(annex_id: AnnexIdParam, request: Annotated[ShortenRequest, Body()]) -> Annex:
    logger.set_correlation_id(annex_id)
    annex = service().shorten(caller(), annex_id, request, now=utcnow())
    metrics.add_metric(name="LeasesShortened", unit=MetricUnit.Count, value=1)
    return annex


@app.post("/annexes/<annex_id>/idle-timeout", summary="Change the idle timeout", responses=ERRORS)
def set_idle_timeout(annex_id: AnnexIdParam, request: Annotated[IdleTimeoutRequest, Body()]) -> Annex:
    logger.set_correlation_id(annex_id)
    return service().set_idle_timeout(caller(), annex_id, request, now=utcnow())


@app.post("/annexes/<annex_id>/stop", summary="Stop the annex now", responses=ERRORS)
def stop_annex(annex_id: AnnexIdParam, request: Annotated[StopRequest | None, Body()] = None) -> AnnexView:
    logger.set_correlation_id(annex_id)
    detail = service().stop(caller(), annex_id, now=utcnow(), reason=request.reason if request else None)
    metrics.add_metric(name="AnnexesStopped", unit=MetricUnit.Count, value=1)
    return detail


@app.post("/annexes/<annex_id>/budget", summary="Set or change the annex's budget (USD)", responses=ERRORS)
def set_budget(annex_id: AnnexIdParam, body: Annotated[BudgetRequest, Body()]) -> AnnexView:
    logger.set_correlation_id(annex_id)
    return service().set_budget(caller(), annex_id, body, now=utcnow())


@app.post(
    "/estimates",
    summary="What a request or an extension would cost, against your month's budget",
    responses=ERRORS,
)
def estimate(body: Annotated[EstimateRequest, Body()]) -> Quote:
    return service().estimate(caller(), body, now=utcnow())


@app.post("/notifications", summary="E-mail me the notices of my annexes", responses=ERRORS)
def subscribe(body: Annotated[NotificationRequest, Body()]) -> NotificationSubscription:
    return service().subscribe(caller(), body)


@app.put("/admin/budgets", summary="Set an owner's monthly budget (administrators)", responses=ERRORS)
def set_owner_budget(body: Annotated[OwnerBudgetRequest, Body()]) -> OwnerBudget:
    return service().set_owner_budget(caller(), body, now=utcnow())


@app.get("/admin/spend", summary="Spend per owner for a month (administrators)", responses=ERRORS)
def spend_report(month: Annotated[str | None, Query(pattern=MONTH_PATTERN)] = None) -> SpendReport:
    return service().spend_report(caller(), month=month, now=utcnow())


@app.get("/health", summary="Limits in force and when each fail-safe sweep last succeeded", responses=ERRORS)
def health() -> Health:
    return service().health(caller())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics
@strict_input(app)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
