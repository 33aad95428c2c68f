"""`annex-client status` says why an instance that reported a boot problem did not join."""

from __future__ import annotations

from datetime import UTC, datetime

from annex_client import render

from tests.unit.client_fakes import annex

NOW = datetime(2026, 11, 22, 14, 48, tzinfo=UTC)
PROBLEM = "the collector refused ADVERTISE_STARTD for annex@cm.example.org"


def _instance(instance_id: str, **extra):
    return {
        "instance_id": instance_id,
        "instance_type": "c7i.xlarge",
        "zone": "us-east-1a",
        "market": "on-demand",
        "state": "terminated",
        **extra,
    }


def test_status_names_the_boot_problem_of_the_instance_that_reported_it():
    detail = annex(
        state="running",
        instances=[
            _instance("i-0aaaaaaaaaaaaaaa1", end_reason="boot-problem", problem=PROBLEM),
            _instance("i-0aaaaaaaaaaaaaaa2", end_reason="idle"),
        ],
    )
    out = render.status_text(detail, NOW, UTC)
    lines = [line for line in out.splitlines() if "did not join" in line]
    assert len(lines) == 1
    assert lines[0].startswith("i-0aaaaaaaaaaaaaaa1 did not join: ")
    assert PROBLEM in lines[0]
    assert "deploy guide" in lines[0]
