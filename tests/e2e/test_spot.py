"""A spot interruption on the running local stack, as the researcher meets it: request --spot --replace;
EC2 interrupts one node (annex-sim=spot-interrupt): status shows it interrupted and draining; EC2
reclaims it; a replacement launches and joins; the history says which replaced which; list counts it."""

from __future__ import annotations

import json

from tests.e2e.conftest import RunningStack, wait_for

LIVE = ("pending", "running")


def status(stack: RunningStack, annex_id: str) -> dict:
    return stack.client_json("status", annex_id)


def test_an_interrupted_spot_instance_drains_is_reclaimed_and_replaced(stack):
    done = stack.client(
        "request",
        "spotty",
        "--count",
        "2",
        "--lease",
        "10m",
        "--spot",
        "--replace",
        "--tag",
        "annex-sim=spot-interrupt:15s,busy,busy",
        "--yes",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    annex = json.loads(done.stdout)
    assert annex["replace"] is True

    def interrupted() -> tuple[dict, str] | None:
        detail = status(stack, annex["id"])
        hit = [i for i in detail["instances"] if i.get("spot_notice") == "interruption"]
        if hit and hit[0]["state"] in LIVE:
            shown = stack.client("status", annex["id"])
            return (hit[0], shown.stdout) if "draining (spot interruption)" in shown.stdout else None
        return None

    victim, shown = wait_for("EC2's interruption notice to reach the record", interrupted, timeout=120)
    assert "1 spot instance(s) interrupted by EC2" in shown

    def reclaimed() -> dict | None:
        detail = status(stack, annex["id"])
        (record,) = [i for i in detail["instances"] if i["instance_id"] == victim["instance_id"]]
        return detail if record["state"] == "terminated" else None

    detail = wait_for("EC2 to reclaim the interrupted instance", reclaimed, timeout=60)
    (ended,) = [i for i in detail["instances"] if i["instance_id"] == victim["instance_id"]]
    assert ended["end_reason"] == "spot-interrupted"
    assert stack.instances(annex["id"])[victim["instance_id"]] in ("shutting-down", "terminated")

    def replaced_and_joined() -> dict | None:
        detail = status(stack, annex["id"])
        new = [i for i in detail["instances"] if i.get("replaces") == victim["instance_id"]]
        return detail if new and new[0].get("last_heartbeat_at") else None

    detail = wait_for("the replacement to launch and report", replaced_and_joined, timeout=90)
    (new,) = [i for i in detail["instances"] if i.get("replaces") == victim["instance_id"]]
    assert new["market"] == "spot"
    assert new["claimed_slots"] == 4  # busy: the third behaviour of the list
    (old,) = [i for i in detail["instances"] if i["instance_id"] == victim["instance_id"]]
    assert old["replaced_by"] == new["instance_id"]
    events = [e["detail"] for e in detail["history"] if e["action"] == "instance-replaced"]
    assert events == [f"{new['instance_id']} replaced {victim['instance_id']} (spot interruption)"]
    live = [i for i, state in stack.instances(annex["id"]).items() if state in LIVE]
    assert len(live) == 2  # never more than the annex's count

    listed = stack.client("list")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("spotty ")]
    assert "(1 interrupted, 1 replaced)" in row
    shown = stack.client("status", annex["id"]).stdout
    assert f"{new['instance_id']} replaced {victim['instance_id']}." in shown

    stopped = stack.client("stop", "spotty", "--yes")
    assert stopped.returncode == 0, stopped.stderr
    assert not set(stack.instances(annex["id"]).values()) & set(LIVE)
