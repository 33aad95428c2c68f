"""Annexes on the running local stack, as users meet them: launch, heartbeats, idle and silent reaping,
lease expiry, stop, and instances that try to speak for each other.

All scenario annexes are requested up front so their clocks run at the same time."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import RunningStack, wait_for

LIVE = ("pending", "running")


def request(stack: RunningStack, name: str, *args: str) -> dict:
    done = stack.client("request", name, *args, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def annexes(stack):
    return {
        "life": request(
            stack, "life", "--count", "2", "--lease", "10m", "--idle", "5m", "--tag", "annex-sim=busy"
        ),
        "idle": request(
            stack, "idle", "--count", "2", "--lease", "10m", "--idle", "20s", "--tag", "annex-sim=busy,idle"
        ),
        "silent": request(stack, "silent", "--count", "1", "--lease", "10m", "--tag", "annex-sim=silent"),
        "expiring": request(stack, "expiring", "--count", "1", "--lease", "1m", "--tag", "annex-sim=busy"),
    }


def status(stack: RunningStack, annex: dict) -> dict:
    return stack.client_json("status", annex["id"])


def heartbeating(stack: RunningStack, annex: dict, n: int) -> dict | None:
    detail = status(stack, annex)
    beats = [i for i in detail["instances"] if i.get("last_heartbeat_at")]
    return detail if len(beats) >= n else None


def test_a_full_lifecycle(stack, annexes):
    life = annexes["life"]
    # launched and heartbeating, as the researcher sees it
    detail = wait_for("two heartbeating instances", lambda: heartbeating(stack, life, 2), timeout=90)
    assert detail["state"] == "running"
    assert {i["claimed_slots"] for i in detail["instances"]} == {4}
    assert set(stack.instances(life["id"]).values()) == {"running"}
    # extend: from the current expiry
    extended = stack.client_json("extend", "life", "--by", "30m", "--yes")
    assert extended["annex"]["lease_expires_at"] > life["lease_expires_at"]
    # stop: TerminateInstances before the answer
    stopped = stack.client("stop", "life", "--yes")
    assert stopped.returncode == 0, stopped.stderr
    assert not set(stack.instances(life["id"]).values()) & set(LIVE)
    final = status(stack, life)
    assert final["state"] == "ended"
    assert final["end_reason"] == "stopped"
    actions = [e["action"] for e in reversed(final["history"])]  # the API answers newest first
    assert actions[:3] == ["requested", "launching", "running"]
    assert "extended" in actions
    assert actions[-1] == "ended"


def test_the_idle_instance_is_reaped_and_the_busy_one_is_not(stack, annexes):
    idle = annexes["idle"]

    def one_reaped():
        detail = status(stack, idle)
        reaped = [i for i in detail["instances"] if i["state"] == "terminated"]
        return detail if reaped else None

    detail = wait_for("the idle instance to be reaped", one_reaped, timeout=150)
    by_state = {i["state"]: i for i in detail["instances"]}
    assert by_state["terminated"]["end_reason"] == "idle"
    assert by_state["terminated"]["claimed_slots"] == 0
    assert by_state["running"]["claimed_slots"] == 4  # the busy one keeps running
    ec2_states = stack.instances(idle["id"])
    assert ec2_states[by_state["running"]["instance_id"]] == "running"
    assert ec2_states[by_state["terminated"]["instance_id"]] in ("shutting-down", "terminated")
    stack.client("stop", "idle", "--yes")


def test_a_silent_instance_is_reaped(stack, annexes):
    silent = annexes["silent"]

    def ended():
        detail = status(stack, silent)
        return detail if detail["state"] == "ended" else None

    detail = wait_for("the silent instance to be reaped", ended, timeout=150)
    assert detail["instances"][0]["end_reason"] == "silent"
    assert detail["instances"][0]["last_heartbeat_at"] is None
    assert detail["end_reason"] == "all-instances-gone"
    assert not set(stack.instances(silent["id"]).values()) & set(LIVE)


def test_the_lease_ends_it_in_the_cloud(stack, annexes):
    expiring = annexes["expiring"]
    detail = wait_for(
        "lease-check to end the annex",
        lambda: (d := status(stack, expiring)) and d["state"] == "ended" and d,
        timeout=150,
    )
    assert detail["end_reason"] == "lease-expired"
    assert detail["ended_at"] >= detail["lease_expires_at"]
    assert not set(stack.instances(expiring["id"]).values()) & set(LIVE)


def test_an_instance_cannot_report_as_another(stack, annexes):
    life_idle = annexes["idle"]
    detail = wait_for("two instances", lambda: heartbeating(stack, life_idle, 1), timeout=90)
    mine = detail["instances"][0]["instance_id"]
    other_annex = annexes["expiring"]
    others = list(stack.instances(other_annex["id"]))
    assert others, "the other annex has an instance"
    wait_for("the instance's credentials", lambda: _has_profile(stack, mine), timeout=30)

    # as itself: accepted, and told what to do
    status_code, answer = stack.awscurl(
        "POST",
        "/heartbeat",
        api=stack.heartbeat_api,
        profile=mine,
        body={"instance_id": mine, "annex_id": life_idle["id"], "claimed_slots": 1, "total_slots": 4},
    )
    assert status_code == 200, answer
    assert answer["action"] in ("run", "drain", "terminate")
    # as another instance: refused, and that instance's record is untouched
    before = status(stack, other_annex)["instances"]
    status_code, answer = stack.awscurl(
        "POST",
        "/heartbeat",
        api=stack.heartbeat_api,
        profile=mine,
        body={"instance_id": others[0], "annex_id": other_annex["id"], "claimed_slots": 0, "total_slots": 4},
    )
    assert status_code == 403, answer
    after = status(stack, other_annex)["instances"]
    assert [i.get("claimed_slots") for i in after] == [i.get("claimed_slots") for i in before]
    # a researcher is not an instance: her policy (the README's) does not reach the heartbeat HTTP API,
    # so API Gateway refuses her before any function, as it does: 403 {"message": "Forbidden"}
    status_code, answer = stack.awscurl(
        "POST",
        "/heartbeat",
        api=stack.heartbeat_api,
        profile="alice",
        body={"instance_id": mine, "annex_id": life_idle["id"], "claimed_slots": 0, "total_slots": 4},
    )
    assert status_code == 403
    assert answer == {"message": "Forbidden"}
    # and an instance reaches nothing on the researchers' API
    status_code, answer = stack.awscurl("GET", "/annexes", profile=mine)
    assert status_code == 403
    assert "not authorized to perform: execute-api:Invoke" in str(answer)


def _has_profile(stack: RunningStack, name: str) -> bool:
    try:
        stack.credentials(name)
    except KeyError:
        return False
    return True
