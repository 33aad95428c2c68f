"""`status` shows the spot instances EC2 interrupted: draining while they live, and a count."""

from __future__ import annotations

from datetime import UTC, datetime

from annex_client import render
from annex_client.cli import main

from tests.unit.client_fakes import HEALTH, Wire, annex, quote_for

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


# --- replacement (--replace) and the counts in list ------------------------------------------------


def test_list_counts_the_interrupted_and_replaced_instances_of_each_annex():
    hit = annex(state="running", count=2, launched_count=2, interrupted_count=2, replaced_count=1)
    calm = annex(name="calm", id="ax-00000000000000c2", state="running", launched_count=2)
    out = render.annex_table([hit, calm], NOW, UTC, owners=False)
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "2/2 (2 interrupted, 1 replaced)" in rows[hit["name"]]
    assert "interrupted" not in rows["calm"]


def test_status_says_which_instance_replaced_which_and_why_one_was_not():
    detail = annex(
        state="running",
        launched_count=2,
        replace=True,
        instances=[
            spot(
                "i-0aaaaaaaaaaaaaaa1",
                state="terminated",
                end_reason="spot-interrupted",
                spot_notice="interruption",
                replaced_by="i-0bbbbbbbbbbbbbbb1",
            ),
            spot(
                "i-0aaaaaaaaaaaaaaa2",
                state="terminated",
                end_reason="spot-interrupted",
                spot_notice="interruption",
                replacement_note="its lease ends at 2026-12-03T12:03:00Z, within the drain lead of 5m",
            ),
            spot("i-0bbbbbbbbbbbbbbb1", replaces="i-0aaaaaaaaaaaaaaa1"),
        ],
    )
    out = render.status_text(detail, NOW, UTC)
    table = out.split("\n\n")[1]  # the instance table
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("i-")}
    assert "replaced by i-0bbbbbbbbbbbbbbb1" in rows["i-0aaaaaaaaaaaaaaa1"]
    assert "not replaced" in rows["i-0aaaaaaaaaaaaaaa2"]
    assert "replaces i-0aaaaaaaaaaaaaaa1" in rows["i-0bbbbbbbbbbbbbbb1"]
    assert "i-0bbbbbbbbbbbbbbb1 replaced i-0aaaaaaaaaaaaaaa1." in out
    assert "i-0aaaaaaaaaaaaaaa2 was not replaced: its lease ends" in out
    assert "each interrupted instance is replaced once" in out


def test_replace_without_spot_is_a_usage_error_and_nothing_is_sent(capsys, monkeypatch):
    wire = Wire.install(monkeypatch)
    code = main(["request", "bio", "--count", "1", "--lease", "1h", "--replace", "--yes"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "--replace needs --spot" in err
    assert wire.calls == []


def test_request_sends_replace_with_spot(capsys, monkeypatch):
    wire = (
        Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH)).on("POST", "/annexes", (201, annex()))
    )
    wire.on("POST", "/estimates", (200, quote_for({"request": {"count": 1, "lease": "1h"}})))
    code = main(["request", "bio", "--count", "1", "--lease", "1h", "--spot", "--replace", "--yes"])
    _, err = capsys.readouterr()
    assert code == 0
    assert "each interrupted instance is replaced once" in err
    create = [c for c in wire.calls if c.path == "/annexes"][-1]
    assert create.body["replace"] is True
    assert create.body["market"] == "spot"
