"""Who may report a heartbeat, and what the answer tells the instance to do."""

from __future__ import annotations

from datetime import timedelta

import pytest
from annex.core.auth import authorize_instance_report
from annex.core.errors import Forbidden
from annex.core.models import AnnexState, EndReason, HeartbeatAction, InstanceState
from annex.failsafe.heartbeat import answer

from tests.unit.builders import INSTANCE_ID, T0, make_annex, make_instance

ROLE = "annex-prod-AnnexInstanceRole-ABC123"
IID = INSTANCE_ID
DRAIN = timedelta(minutes=10)
M = timedelta(minutes=1)
annex = make_annex


def instance(**kw):
    return make_instance(**{"last_heartbeat_at": T0 + 5 * M, "claimed_slots": 1, "total_slots": 4, **kw})


def test_the_instance_itself_may_report():
    authorize_instance_report(
        f"arn:aws:sts::123456789012:assumed-role/{ROLE}/{IID}", role_name=ROLE, instance_id=IID
    )


@pytest.mark.parametrize(
    "arn",
    [
        None,
        "",
        "arn:aws:iam::123456789012:user/alice",
        f"arn:aws:iam::123456789012:role/{ROLE}",
        f"arn:aws:sts::123456789012:assumed-role/OtherRole/{IID}",
        f"arn:aws:sts::123456789012:assumed-role/{ROLE}/i-0fedcba9876543210",  # another instance
        f"arn:aws:sts::123456789012:assumed-role/{ROLE}/{IID}-extra",
        f"arn:aws:sts::123456789012:federated-user/{IID}",
    ],
)
def test_anyone_else_is_forbidden(arn):
    with pytest.raises(Forbidden):
        authorize_instance_report(arn, role_name=ROLE, instance_id=IID)


def test_run_while_the_lease_is_ahead_and_there_is_work():
    reply = answer(annex(), instance(), now=T0 + 6 * M, drain_lead=DRAIN)
    assert reply.action is HeartbeatAction.RUN
    assert reply.lease_expires_at == T0 + timedelta(hours=1)


@pytest.mark.parametrize(
    ("the_annex", "the_instance", "now", "expected"),
    [
        (None, instance(), T0, HeartbeatAction.TERMINATE),
        (
            annex(state=AnnexState.ENDED, end_reason=EndReason.STOPPED),
            instance(),
            T0,
            HeartbeatAction.TERMINATE,
        ),
        (
            annex(),
            instance(state=InstanceState.TERMINATING, end_reason=EndReason.IDLE),
            T0,
            HeartbeatAction.TERMINATE,
        ),
        (annex(), instance(), T0 + 60 * M, HeartbeatAction.TERMINATE),  # lease passed
        (annex(), instance(), T0 + 50 * M, HeartbeatAction.DRAIN),  # lease within the drain lead
        (annex(), instance(), T0 + 50 * M - timedelta(seconds=1), HeartbeatAction.RUN),
        (annex(), instance(claimed_slots=0, idle_since=T0 + 10 * M), T0 + 30 * M, HeartbeatAction.DRAIN),
        (annex(), instance(claimed_slots=0, idle_since=T0 + 10 * M), T0 + 29 * M, HeartbeatAction.RUN),
    ],
)
def test_the_answer(the_annex, the_instance, now, expected):
    assert answer(the_annex, the_instance, now=now, drain_lead=DRAIN).action is expected
