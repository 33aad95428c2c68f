"""The local stack's simulated nodes (moto EC2): partitionable slots counted like the real agent, and the
`broken-token` behaviour that reports a boot problem and powers off."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from annex.core.models import HeartbeatRequest, HeartbeatResponse
from annex_local.nodes import BROKEN_TOKEN_PROBLEM, CPUS, SimulatedNodes

from tests.integration.conftest import STACK, run_tagged_instances

NOW = datetime(2029, 12, 31, 12, 0, tzinfo=UTC)  # the lease tag says 2030-01-01


class RecordingNodes(SimulatedNodes):
    """The simulated nodes with the HTTP call replaced: each body is validated by the API model."""

    def __init__(self, ec2: Any, answer: HeartbeatResponse) -> None:
        super().__init__(
            ec2=ec2,
            heartbeat_url="http://127.0.0.1:1/heartbeat",
            identities={},
            role_name="annex-instance",
            stack_name=STACK,
            heartbeat_period=60,
            lock=threading.RLock(),
        )
        self.answer = answer
        self.sent: list[HeartbeatRequest] = []

    def signed_post(self, node: Any, body: bytes) -> tuple[int, Any]:
        self.sent.append(HeartbeatRequest.model_validate(json.loads(body)))
        return 200, self.answer.model_dump(mode="json")


def tag(ec2, instance_ids: list[str], behaviour: str) -> None:
    ec2.create_tags(Resources=instance_ids, Tags=[{"Key": "annex-sim", "Value": behaviour}])


def state(ec2, instance_id: str) -> str:
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return found["State"]["Name"]


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [("busy", (CPUS, CPUS)), ("idle", (0, CPUS))],
)
def test_a_node_reports_its_partitionable_slot_as_a_user_reads_it(ec2, behaviour, expected):
    ids = run_tagged_instances(ec2, "ax-0123456789abcdef", 1)
    tag(ec2, ids, behaviour)
    nodes = RecordingNodes(ec2, HeartbeatResponse(action="run"))

    nodes.tick(NOW)

    [body] = nodes.sent
    assert (body.claimed_slots, body.total_slots) == expected


def test_a_draining_node_reads_idle_and_an_extension_takes_jobs_again(ec2):
    ids = run_tagged_instances(ec2, "ax-0123456789abcdef", 1)
    nodes = RecordingNodes(ec2, HeartbeatResponse(action="drain", reason="lease"))
    nodes.tick(NOW)
    nodes.answer = HeartbeatResponse(action="run")

    nodes.tick(NOW + timedelta(seconds=61))
    nodes.tick(NOW + timedelta(seconds=122))

    assert [(b.claimed_slots, b.total_slots) for b in nodes.sent] == [(CPUS, CPUS), (0, CPUS), (CPUS, CPUS)]
    assert state(ec2, ids[0]) == "running"


def test_broken_token_reports_the_problem_once_and_powers_off(ec2):
    ids = run_tagged_instances(ec2, "ax-0123456789abcdef", 1)
    tag(ec2, ids, "broken-token")
    nodes = RecordingNodes(ec2, HeartbeatResponse(action="run"))

    nodes.tick(NOW)
    nodes.tick(NOW + timedelta(seconds=61))

    assert [b.problem for b in nodes.sent] == [BROKEN_TOKEN_PROBLEM]
    assert state(ec2, ids[0]) in ("shutting-down", "terminated")
