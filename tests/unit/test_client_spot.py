"""`status` shows the spot instances EC2 interrupted: draining while they live, and a count."""

from __future__ import annotations

from datetime import UTC, datetime

from annex_client import render

from tests.unit.client_fakes import annex

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def spot(instance_id: str, **extra: object) -> dict[str, object]:
    return {
        "instance_id": instance_id,
        "instance_type": "c7i.xlarge",
        "zone": "us-east-1a",
        "market": "spot",
        "state": "running",
        "last_heartbeat_at": "2026-12-03T11:59:30Z",
        "claimed_slots": 2,
        "total_slots": 4,
        **extra,
    }


def test_status_marks_interrupted_instances_draining_and_counts_them():
    detail = annex(
        state="running",
        launched_count=2,
        instances=[
            spot("i-0aaaaaaaaaaaaaaa1", spot_notice="interruption", spot_notice_at="2026-12-03T11:59:00Z"),
            spot("i-0aaaaaaaaaaaaaaa2"),
        ],
    )
    out = render.status_text(detail, NOW, UTC)
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("i-")}
    assert "draining (spot interruption)" in rows["i-0aaaaaaaaaaaaaaa1"]
    assert "busy 2/4" in rows["i-0aaaaaaaaaaaaaaa2"]
    assert "1 spot instance(s) interrupted by EC2" in out


def test_status_without_notices_says_nothing_about_spot():
    detail = annex(state="running", launched_count=1, instances=[spot("i-0aaaaaaaaaaaaaaa2")])
    assert "interrupted" not in render.status_text(detail, NOW, UTC)
