"""A node that finds a boot problem reports it and powers off: the researcher sees why in `status`."""

from __future__ import annotations

import json

from tests.e2e.conftest import wait_for

LIVE = ("pending", "running")


def test_a_reported_boot_problem_shows_in_status_and_the_instance_is_terminated(stack):
    done = stack.client(
        "request",
        "broken",
        "--count",
        "1",
        "--lease",
        "10m",
        "--tag",
        "annex-sim=broken-token",
        "--yes",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    annex = json.loads(done.stdout)

    def reaped():
        detail = stack.client_json("status", annex["id"])
        ended = [i for i in detail["instances"] if i["state"] == "terminated"]
        return detail if ended else None

    detail = wait_for("the broken node to be reaped", reaped, timeout=150)
    instance = detail["instances"][0]
    assert instance["end_reason"] == "boot-problem"
    assert instance["problem"]
    assert not set(stack.instances(annex["id"]).values()) & set(LIVE)
    shown = stack.client("status", annex["id"])
    assert shown.returncode == 0, shown.stderr
    assert f"{instance['instance_id']} did not join: {instance['problem']}" in shown.stdout
