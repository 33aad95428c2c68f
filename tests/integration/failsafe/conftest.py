"""Fixtures for the fail-safe tests: annexes and instances recorded as the request and launch functions
record them (create_annex, then put_instances with reap_at = launched_at + boot grace), real moto
instances tagged by the stack, and a clock the tests move."""

from __future__ import annotations

import importlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from annex.aws import clients
from annex.aws.inventory import Ec2Inventory
from annex.core.clock import to_iso, utcnow
from annex.core.config import HeartbeatSettings, IdleReapSettings, LeaseCheckSettings
from annex.core.models import (
    Annex,
    AnnexState,
    HeartbeatRequest,
    HeartbeatResponse,
    Instance,
    InstanceState,
    Market,
)
from annex.failsafe.heartbeat import HeartbeatService
from annex.failsafe.rules import refresh_interval
from annex.failsafe.sweeps import sweep_handler
from annex.store import AnnexStore, InstanceKey, InstanceRecord
from annex_local.events import FakeContext
from annex_local.template import resolve_environment

from tests.integration.conftest import ALICE, INSTANCE_PROFILE_ARN, STACK, TABLE, run_tagged_instances

EVENTS = Path(__file__).resolve().parents[3] / "events"
ACCOUNT = "123456789012"
INSTANCE_ROLE = "annex-test-stack-AnnexInstanceRole-TESTROLE"
ROLE_OVERRIDES = {
    "AnnexInstanceRole": INSTANCE_ROLE,
    "LeaseTimerQueue": "",
    "AnnexInstanceProfile.Arn": INSTANCE_PROFILE_ARN,
    # moto is not thread-safe: the sweeps' store work runs one item at a time here (the pool is proven
    # in tests/unit/test_sweep_workers.py), and the orphan sweep examines the whole fleet on each run
    # unless a test says otherwise (test_orphan_rotation.py runs the template's segments).
    "SWEEP_WORKERS": "1",
    "ORPHAN_SEGMENTS": "1",
}
_names = itertools.count(1)


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text())


def instance_arn(instance_id: str, role: str = INSTANCE_ROLE) -> str:
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{instance_id}"


def function_env(logical_id: str) -> dict[str, str]:
    return resolve_environment(logical_id, table_name=TABLE, stack_name=STACK, overrides=ROLE_OVERRIDES)


@dataclass
class Fleet:
    """Builds annexes in the states the sweeps meet, and reads back what a user would see."""

    store: AnnexStore
    ec2: Ec2Inventory
    ec2_client: Any
    ddb: Any
    t0: datetime
    heartbeat_settings: HeartbeatSettings = field(
        default_factory=lambda: HeartbeatSettings.from_env(function_env("HeartbeatFunction"))
    )
    lease_settings: LeaseCheckSettings = field(
        default_factory=lambda: LeaseCheckSettings.from_env(function_env("LeaseCheckFunction"))
    )
    reap_settings: IdleReapSettings = field(
        default_factory=lambda: IdleReapSettings.from_env(function_env("IdleReapFunction"))
    )

    def annex(
        self,
        *,
        count: int = 2,
        lease: timedelta = timedelta(hours=4),
        idle: timedelta = timedelta(minutes=20),
        owner: str = ALICE,
        state: AnnexState = AnnexState.RUNNING,
        annex_id: str | None = None,
        instance_ids: list[str] | None = None,
        launch: bool = True,
        record: bool = True,
        lease_tag: str | None = None,
    ) -> tuple[Annex, list[str]]:
        """An annex created at t0 (quota reserved), moved to `state`; when `launch`, `count` moto instances
        tagged by the stack (or the given ids, recorded without EC2), recorded as pending when `record`."""
        now = self.t0
        annex = Annex(
            id=annex_id or self.store.new_annex_id(),
            name=f"run-{next(_names)}",
            owner=owner,
            state=AnnexState.REQUESTED,
            count=count,
            instance_types=["c7i.xlarge"],
            market=Market.ON_DEMAND,
            lease_expires_at=now + lease,
            idle_timeout_seconds=int(idle.total_seconds()),
            created_at=now,
            updated_at=now,
        )
        self.store.create_annex(
            annex,
            fingerprint="test",
            max_live_per_owner=1000,
            max_live_in_stack=100_000,
            actor=owner,
            retention=timedelta(days=30),
        )
        path = {
            AnnexState.REQUESTED: [],
            AnnexState.LAUNCHING: [AnnexState.LAUNCHING],
            AnnexState.RUNNING: [AnnexState.LAUNCHING, AnnexState.RUNNING],
        }[state]
        previous = AnnexState.REQUESTED
        for step in path:
            assert self.store.set_state(
                annex.id, expected=[previous], new_state=step, now=now, actor="launch"
            )
            previous = step
        ids: list[str] = []
        if launch:
            if instance_ids is not None:
                ids = list(instance_ids)
            else:
                tag = lease_tag if lease_tag is not None else to_iso(annex.lease_expires_at)
                ids = run_tagged_instances(self.ec2_client, annex.id, count, lease=tag)
            if record:
                self.record_instances(annex, ids)
        return self.store.get_annex(annex.id), ids

    def record_instances(self, annex: Annex, ids: list[str]) -> None:
        instances = [
            Instance(
                instance_id=i,
                annex_id=annex.id,
                instance_type="c7i.xlarge",
                zone="us-east-1a",
                market=Market.ON_DEMAND,
                state=InstanceState.PENDING,
                launched_at=self.t0,
            )
            for i in ids
        ]
        self.store.put_instances(instances, reap_at=self.t0 + self.reap_settings.boot_grace)

    def heartbeat(
        self, annex: Annex, instance_id: str, *, at: datetime, claimed: int, total: int = 4
    ) -> HeartbeatResponse:
        service = HeartbeatService(self.store, self.heartbeat_settings)
        request = HeartbeatRequest(
            instance_id=instance_id, annex_id=annex.id, claimed_slots=claimed, total_slots=total
        )
        return service.report(instance_arn(instance_id), request, now=at)

    def silent_at(self, last_written: datetime) -> datetime:
        """When an instance whose record was last written at `last_written` counts as silent: the loss
        grace plus R, the most the stored last-seen time may lag the instance's last report."""
        timing = self.reap_settings
        return last_written + timing.heartbeat_loss_grace + refresh_interval(timing)

    # --- what a user would see ------------------------------------------------------------------

    def instance(self, annex_id: str, instance_id: str) -> InstanceRecord:
        record = self.store.get_instance(InstanceKey(annex_id, instance_id))
        assert record is not None
        return record

    def quota(self, owner: str = ALICE) -> int:
        return self.store.live_instances(owner)

    def held(self, annex_id: str) -> int:
        record = self.store.get_annex_record(annex_id)
        assert record is not None
        return record.held

    def ec2_state(self, instance_ids: list[str]) -> dict[str, str]:
        resp = self.ec2_client.describe_instances(InstanceIds=list(instance_ids))
        return {i["InstanceId"]: i["State"]["Name"] for r in resp["Reservations"] for i in r["Instances"]}

    def running(self, instance_ids: list[str]) -> set[str]:
        return {i for i, s in self.ec2_state(instance_ids).items() if s in ("pending", "running")}


@pytest.fixture
def t0() -> datetime:
    """The tests' clock starts now (the API compares extensions with the real time) and moves by hand."""
    return utcnow()


@pytest.fixture
def fleet(ddb, ec2, t0) -> Fleet:
    store = AnnexStore(ddb, TABLE)
    return Fleet(
        store=store,
        ec2=Ec2Inventory(ec2, STACK, instance_profile_arn=INSTANCE_PROFILE_ARN),
        ec2_client=ec2,
        ddb=ddb,
        t0=t0,
    )


class Handler:
    """A function's handler with its template environment, called as Lambda would, at a chosen time."""

    def __init__(self, module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.module = module
        self.monkeypatch = monkeypatch

    def __call__(self, event: dict[str, Any], *, at: datetime) -> Any:
        context = FakeContext(self.module.__name__.split(".")[1])
        if hasattr(self.module, "run"):
            # A sweep: its handler, as the module builds it, with the clock injected.
            m = self.module
            handler = sweep_handler(
                m.settings,
                m.deps,
                m.run,
                logger=m.logger,
                metrics=m.metrics,
                clock=lambda: at,
            )
            return handler(event, context)
        return self.module.handler(event, context, clock=lambda: at)


def _handler(name: str, logical_id: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Handler]:
    for key, value in function_env(logical_id).items():
        monkeypatch.setenv(key, value)
    module = importlib.import_module(f"functions.{name}.app")
    caches = [getattr(module, n) for n in ("settings", "service", "deps") if hasattr(module, n)]
    for fn in caches:
        fn.cache_clear()
    clients.client.cache_clear()
    yield Handler(module, monkeypatch)
    for fn in caches:
        fn.cache_clear()
    clients.client.cache_clear()


@pytest.fixture
def heartbeat_fn(ddb, monkeypatch) -> Iterator[Handler]:
    yield from _handler("heartbeat", "HeartbeatFunction", monkeypatch)


@pytest.fixture
def lease_check_fn(ddb, ec2, monkeypatch) -> Iterator[Handler]:
    yield from _handler("lease_check", "LeaseCheckFunction", monkeypatch)


@pytest.fixture
def idle_reap_fn(ddb, ec2, monkeypatch) -> Iterator[Handler]:
    yield from _handler("idle_reap", "IdleReapFunction", monkeypatch)


class Killed(BaseException):
    """The process dies (a Lambda timeout, an out-of-memory kill): nothing in the sweep can catch it."""


@pytest.fixture
def kill_on():
    """kill_on(client, "dynamodb", "TransactWriteItems", nth=2): the nth such call dies before it is sent."""
    registered = []

    def arm(client, service: str, operation: str, *, nth: int = 1) -> None:
        calls = {"n": 0}

        def hook(**_kwargs):
            calls["n"] += 1
            if calls["n"] == nth:
                raise Killed(f"killed before {operation} #{nth}")

        event = f"before-call.{service}.{operation}"
        client.meta.events.register(event, hook)
        registered.append((client, event, hook))

    yield arm
    for client, event, hook in registered:
        client.meta.events.unregister(event, hook)


@pytest.fixture
def lease_timer_fn(ddb, ec2, monkeypatch) -> Iterator[Handler]:
    yield from _handler("lease_timer", "LeaseTimerFunction", monkeypatch)
