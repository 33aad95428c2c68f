"""The operations the request API exposes. Handlers parse, call one of these and return."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any

from annex.api.policy import (
    AnnexSpec,
    resolve_create,
    resolve_extension,
    resolve_idle_timeout,
    resolve_owner,
    resolve_shortening,
)
from annex.core.auth import Caller
from annex.core.clock import format_duration, to_iso
from annex.core.config import RequestSettings
from annex.core.errors import AnnexNotFound, Forbidden, LeaseConflict, TokenReused
from annex.core.models import (
    Annex,
    AnnexState,
    CreateAnnexRequest,
    EndReason,
    ExtendRequest,
    Health,
    IdleTimeoutRequest,
    Limits,
    ShortenRequest,
    SweepStatus,
)
from annex.money.models import (
    AnnexListView,
    AnnexSummary,
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
from annex.money.service import MoneyService
from annex.store import AnnexStore, TokenTaken
from annex.store.annexes import HISTORY_PAGE

if TYPE_CHECKING:
    from annex.aws.inventory import Ec2Inventory
    from annex.failsafe.lease_timer import TimerQueue

# Cold start: the typical first request (list, get, create) needs neither EC2 nor SNS, and creating a
# botocore client costs tens of milliseconds (EC2's service model alone ~100 ms), so the service takes
# the routes-only collaborators as functions that make them, called at their first use.


def fingerprint(
    spec: AnnexSpec, condor_user: str, budget: Decimal | None = None, *, replace: bool = False
) -> str:
    fields: dict[str, object] = {
        "name": spec.name,
        "count": spec.count,
        "types": list(spec.instance_types),
        "market": spec.market.value,
        "lease": int(spec.lease.total_seconds()),
        "idle": int(spec.idle_timeout.total_seconds()),
        "tags": spec.tags,
        "condor_user": condor_user,
        "share_with": list(spec.share_with),
        "all_my_jobs": spec.all_my_jobs,
    }
    if budget is not None:  # only when set, so the fingerprints of requests without one are unchanged
        fields["budget"] = format(budget, "f")
    if replace:  # likewise only when asked for
        fields["replace"] = True
    canonical = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _extend_fingerprint(request: ExtendRequest) -> str:
    fields = {
        "by": int(request.by.total_seconds()) if request.by is not None else None,
        "until": to_iso(request.until) if request.until is not None else None,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class AnnexService:
    def __init__(
        self,
        store: AnnexStore,
        ec2: Callable[[], Ec2Inventory],
        settings: RequestSettings,
        sns: Callable[[], Any] | None = None,
        timers: Callable[[], TimerQueue | None] | None = None,
    ) -> None:
        """`ec2`, `sns` and `timers` make their collaborator at its first use (no `sns`: no notifications;
        no `timers`: no lease-timer queue)."""
        self.store = store
        self.settings = settings
        self.money = MoneyService(store, settings)
        self._ec2, self._sns, self._timers = ec2, sns, timers

    @cached_property
    def ec2(self) -> Ec2Inventory:  # extend, shorten and stop (lease tags, termination)
        return self._ec2()

    @cached_property
    def sns(self) -> Any:  # only POST /notifications uses it
        return self._sns() if self._sns else None

    @cached_property
    def timers(self) -> TimerQueue | None:
        """The lease-timer queue: a lease set to end within minutes ends to the second."""
        return self._timers() if self._timers else None

    def _arm_timer(self, annex: Annex, *, now: datetime) -> None:
        from annex.failsafe.lease_timer import arm_if_due_soon  # noqa: PLC0415 - cold start: create/extend/shorten

        arm_if_due_soon(self.timers, annex.id, annex.lease_expires_at, now=now)

    # --- create ---------------------------------------------------------------------------------

    def create(self, caller: Caller, request: CreateAnnexRequest, *, now: datetime) -> tuple[Annex, bool]:
        """Returns (annex, created). A retry with the same client token returns the first annex."""
        spec = resolve_create(request, self.settings)
        condor_user = resolve_owner(spec, caller.arn, request.condor_user, self.settings)
        fp = fingerprint(spec, condor_user, request.budget, replace=request.replace)
        token = request.client_token
        if token:
            existing = self._by_token(caller, token, fp)
            if existing:
                return existing, False
        # Admission control: refused (409, with the figures) if it would pass the owner's month budget.
        self.money.quote_create(
            caller.owner,
            count=spec.count,
            instance_types=spec.instance_types,
            market=spec.market,
            lease=spec.lease,
            budget=request.budget,
            now=now,
            enforce=True,
        )
        annex = Annex(
            id=self.store.new_annex_id(),
            name=spec.name,
            owner=caller.owner,
            condor_user=condor_user,
            share_with=list(spec.share_with),
            all_my_jobs=spec.all_my_jobs,
            state=AnnexState.REQUESTED,
            count=spec.count,
            instance_types=list(spec.instance_types),
            market=spec.market,
            lease_expires_at=now + spec.lease,
            idle_timeout_seconds=int(spec.idle_timeout.total_seconds()),
            created_at=now,
            updated_at=now,
            client_token=token,
            tags=spec.tags,
            budget_usd=request.budget,
            replace=request.replace,
        )
        # The budget's due time goes first: if the create then fails, the budget check finds no annex
        # and drops it; the other order could leave a budgeted annex nobody watches.
        self.money.schedule_budget(annex, [], now=now, retention=self.settings.retention)
        try:
            self.store.create_annex(
                annex,
                fingerprint=fp,
                max_live_per_owner=self.settings.max_live_instances_per_owner,
                max_live_in_stack=self.settings.max_live_instances,
                actor=caller.arn,
                retention=self.settings.retention,
            )
        except TokenTaken:
            existing = self._by_token(caller, token or "", fp)
            if existing is None:  # pragma: no cover - the token item committed, so it is there
                raise
            return existing, False
        self._arm_timer(annex, now=now)
        return annex, True

    def _by_token(self, caller: Caller, token: str, fp: str) -> Annex | None:
        record = self.store.find_token(caller.owner, token)
        if record is None:
            return None
        if record.fingerprint != fp:
            raise TokenReused(
                "this client token was already used for a different request; use a new token",
                field="client_token",
            )
        return self.store.get_annex(record.annex_id)

    # --- read -----------------------------------------------------------------------------------

    def _visible(self, caller: Caller, annex_id: str) -> Annex:
        annex = self.store.get_annex(annex_id)
        if not caller.may_access(annex.owner):
            raise AnnexNotFound(f"no annex {annex_id}")  # do not leak that it exists
        return annex

    def get(
        self,
        caller: Caller,
        annex_id: str,
        *,
        now: datetime,
        history_limit: int = HISTORY_PAGE,
        history_token: str | None = None,
    ) -> AnnexView:
        """The annex, its instances and one page of its history (newest first)."""
        detail = self.store.get_detail(annex_id, history_limit=history_limit, history_token=history_token)
        if not caller.may_access(detail.owner):
            raise AnnexNotFound(f"no annex {annex_id}")
        return self._drains(self.money.view(detail, now=now))

    def _drains(self, view: AnnexView) -> AnnexView:
        return view.model_copy(update={"drains_at": view.drain_time(self.settings.drain_lead)})

    def list(
        self, caller: Caller, *, everyone: bool, limit: int, page_token: str | None, now: datetime
    ) -> AnnexListView:
        if everyone and not caller.is_admin:
            raise Forbidden("only pool administrators may list every owner's annexes; drop scope=all")
        owner = None if everyone else caller.owner
        annexes, next_token = self.store.list_annexes(owner=owner, limit=limit, page_token=page_token)
        book = self.money.book()
        return AnnexListView(
            annexes=[
                AnnexSummary.model_validate(
                    {
                        **a.model_dump(),
                        "cost": self.money.estimate(a, self.store.list_instances(a.id), now=now, book=book),
                        "drains_at": a.drain_time(self.settings.drain_lead),
                    }
                )
                for a in annexes
            ],
            next_token=next_token,
        )

    # --- change ---------------------------------------------------------------------------------

    def extend(self, caller: Caller, annex_id: str, request: ExtendRequest, *, now: datetime) -> ExtendView:
        """Move the lease later by at least MinExtension. A retry with the same client token answers
        the first extension: no second move, no second history event."""
        annex = self._visible(caller, annex_id)
        fp = _extend_fingerprint(request)
        token = request.client_token
        if token and (replay := self._extend_replay(annex, token, fp)):
            return replay
        if not annex.live:
            raise LeaseConflict(f"annex {annex.name} has {annex.state.value}; request a new one instead")
        ext = resolve_extension(
            annex.lease_expires_at, by=request.by, until=request.until, now=now, policy=self.settings
        )
        # Admission control: refused (409, with the figures) if it would pass the owner's month budget.
        quote = self.money.quote_extend(annex, ext.new_expiry, now=now, enforce=True)
        try:
            updated = self.store.extend_lease(
                annex,
                ext.new_expiry,
                actor=caller.arn,
                now=now,
                note=f"{to_iso(annex.lease_expires_at)} -> {to_iso(ext.new_expiry)}"
                + (" (capped)" if ext.capped else ""),
                client_token=token,
                fingerprint=fp,
                retention=self.settings.retention,
            )
        except TokenTaken:  # a concurrent retry with this token won: answer what it did
            replay = self._extend_replay(annex, token or "", fp)
            if replay is None:  # pragma: no cover - the token item committed, so it is there
                raise
            return replay
        # Move the lease tag too: the orphan sweep terminates instances whose own tag has passed.
        _keep_lease_tag(self.ec2, updated)
        self._arm_timer(updated, now=now)
        return ExtendView(annex=updated, capped=ext.capped, message=ext.message, quote=quote)

    def _extend_replay(self, annex: Annex, token: str, fp: str) -> ExtendView | None:
        """The answer to a retried extension (None: the token is new). The lease tag is brought in step
        again, in case the first attempt failed between the record and the tag (a no-op otherwise)."""
        record = self.store.find_extend_token(annex.id, token)
        if record is None:
            return None
        if record.fingerprint != fp:
            raise TokenReused(
                "this client token was already used for a different extension; use a new token",
                field="client_token",
            )
        current = self.store.get_annex(annex.id)
        if current.live:
            _keep_lease_tag(self.ec2, current)
        return ExtendView(
            annex=current,
            capped=False,
            message=f"this extension was already made (same client_token); the lease ends at "
            f"{to_iso(current.lease_expires_at)}",
        )

    def _live(self, caller: Caller, annex_id: str, verb: str) -> Annex:
        annex = self._visible(caller, annex_id)
        if not annex.live:
            raise LeaseConflict(f"annex {annex.name} has {annex.state.value}; it cannot be {verb}")
        return annex

    def shorten(self, caller: Caller, annex_id: str, request: ShortenRequest, *, now: datetime) -> Annex:
        """Move the lease expiry earlier; the due index (in the store) and the instances' lease tag
        follow, so the lease-check and the orphan sweep end it at the new time."""
        annex = self._live(caller, annex_id, "shortened")
        new_expiry = resolve_shortening(
            annex.lease_expires_at, to=request.to, until=request.until, now=now, policy=self.settings
        )
        updated = self.store.shorten_lease(
            annex,
            new_expiry,
            actor=caller.arn,
            now=now,
            note=f"{to_iso(annex.lease_expires_at)} -> {to_iso(new_expiry)}",
        )
        _keep_lease_tag(self.ec2, updated)
        self._arm_timer(updated, now=now)
        return updated

    def set_idle_timeout(
        self, caller: Caller, annex_id: str, request: IdleTimeoutRequest, *, now: datetime
    ) -> Annex:
        """Change the idle timeout; each instance's heartbeat answer and idle-reap use it from now on."""
        annex = self._live(caller, annex_id, "changed")
        idle = resolve_idle_timeout(request.idle_timeout, self.settings)
        return self.store.set_idle_timeout(
            annex,
            int(idle.total_seconds()),
            actor=caller.arn,
            now=now,
            note=f"{format_duration(annex.idle_timeout)} -> {format_duration(idle)}",
        )

    # --- money ----------------------------------------------------------------------------------

    def estimate(self, caller: Caller, body: EstimateRequest, *, now: datetime) -> Quote:
        """What a request or an extension would add, and whether the month's budget allows it."""
        if body.request is not None:
            spec = resolve_create(body.request, self.settings)
            return self.money.quote_create(
                caller.owner,
                count=spec.count,
                instance_types=spec.instance_types,
                market=spec.market,
                lease=spec.lease,
                budget=body.request.budget,
                now=now,
                enforce=False,
            )
        assert body.extend is not None  # the model guarantees one of them
        annex = self._visible(caller, body.extend.annex_id)
        if not annex.live:
            raise LeaseConflict(f"annex {annex.name} has {annex.state.value}; request a new one instead")
        ext = resolve_extension(
            annex.lease_expires_at, by=body.extend.by, until=body.extend.until, now=now, policy=self.settings
        )
        return self.money.quote_extend(annex, ext.new_expiry, now=now, enforce=False)

    def set_budget(self, caller: Caller, annex_id: str, body: BudgetRequest, *, now: datetime) -> AnnexView:
        annex = self._visible(caller, annex_id)
        if not annex.live:
            raise LeaseConflict(f"annex {annex.name} has {annex.state.value}; its budget cannot change")
        self.money.set_budget(
            annex, body.budget, actor=caller.arn, now=now, retention=self.settings.retention
        )
        return self._drains(self.money.view(self.store.get_detail(annex_id), now=now))

    def set_owner_budget(self, caller: Caller, body: OwnerBudgetRequest, *, now: datetime) -> OwnerBudget:
        return self.money.set_owner_budget(
            is_admin=caller.is_admin,
            actor=caller.arn,
            owner=body.owner,
            monthly_usd=body.monthly_usd,
            now=now,
        )

    def spend_report(self, caller: Caller, *, month: str | None, now: datetime) -> SpendReport:
        return self.money.report(is_admin=caller.is_admin, month=month, now=now)

    def subscribe(self, caller: Caller, body: NotificationRequest) -> NotificationSubscription:
        from annex.money.subscriptions import subscribe_owner  # noqa: PLC0415 - cold start: this route only

        return subscribe_owner(self.sns, self.settings.notice_topic_arn, owner=caller.owner, email=body.email)

    def stop(self, caller: Caller, annex_id: str, *, now: datetime, reason: str | None) -> AnnexView:
        """End the annex and send TerminateInstances now, not at the next sweep."""
        from annex.failsafe.termination import end_annexes  # noqa: PLC0415 - cold start: this route only

        self._visible(caller, annex_id)
        end_annexes(
            self.store,
            self.ec2,
            [annex_id],
            reason=EndReason.STOPPED,
            actor=caller.arn,
            now=now,
            retention=self.settings.retention,
            detail=reason or "stopped by request",
        ).raise_failures()
        return self._drains(self.money.view(self.store.get_detail(annex_id), now=now))

    # --- health ---------------------------------------------------------------------------------

    def health(self, caller: Caller) -> Health:
        from annex.failsafe.sweeps import IDLE_REAP, LEASE_CHECK  # noqa: PLC0415 - cold start: this route only

        p = self.settings
        limits = Limits(
            allowed_instance_types=list(p.allowed_instance_types),
            default_instance_type=p.default_instance_type,
            max_instances_per_annex=p.max_instances_per_annex,
            max_live_instances_per_owner=p.max_live_instances_per_owner,
            max_lease_seconds=int(p.max_lease.total_seconds()),
            default_lease_seconds=int(p.default_lease.total_seconds()),
            min_lease_seconds=int(p.min_lease.total_seconds()),
            default_idle_timeout_seconds=int(p.default_idle_timeout.total_seconds()),
            min_idle_timeout_seconds=int(p.min_idle_timeout.total_seconds()),
        )
        sweeps = [
            SweepStatus.model_validate({"name": name, "last_success_at": self.store.sweep_status(name)})
            for name in (LEASE_CHECK, IDLE_REAP)
        ]
        return Health(caller=caller.arn, is_admin=caller.is_admin, limits=limits, sweeps=sweeps)


def _keep_lease_tag(ec2: Ec2Inventory, annex: Annex) -> None:
    """Move the instances' lease tag to the annex's lease (extend and shorten)."""
    from annex.failsafe.lease_tag import keep_lease_tag  # noqa: PLC0415 - cold start: with EC2, at first use

    keep_lease_tag(ec2, annex)
