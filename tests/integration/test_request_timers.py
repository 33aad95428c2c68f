"""Create, extend and shorten arm a lease timer themselves when the new expiry is within the lease-check's
look-ahead (issue 13): a lease of a couple of minutes, or one moved to end within minutes, ends to the
second instead of at the next minute sweep."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import boto3
import pytest
from annex.aws import clients
from annex.aws.inventory import Ec2Inventory
from annex.core.clock import parse_time
from annex.core.models import AnnexState
from annex.failsafe.lease_timer import HORIZON, fire
from annex.store import AnnexStore

from tests.integration.conftest import INSTANCE_PROFILE_ARN, STACK, TABLE

SECOND = timedelta(seconds=1)
RETENTION = timedelta(days=30)


class Timers:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: list[dict] = []

    def annexes(self) -> list[str]:
        return [json.loads(e["MessageBody"])["annex_id"] for e in self.sent]


def with_queue(api, monkeypatch, url: str) -> Timers:
    monkeypatch.setenv("LEASE_TIMER_QUEUE_URL", url)
    monkeypatch.setenv("MIN_LEASE", "1m")
    monkeypatch.setenv("MIN_EXTENSION", "1m")
    monkeypatch.setenv("MIN_IDLE_TIMEOUT", "20s")
    api.module.settings.cache_clear()
    api.module.service.cache_clear()
    timers = Timers(url)
    clients.client("sqs").meta.events.register(
        "provide-client-params.sqs.SendMessageBatch",
        lambda params, **_: timers.sent.extend(params["Entries"]),
    )
    return timers


@pytest.fixture
def timers(api, monkeypatch) -> Timers:
    url = boto3.client("sqs", region_name="us-east-1").create_queue(QueueName="lease-timers")["QueueUrl"]
    return with_queue(api, monkeypatch, url)


def create(api, lease: str, name: str = "short") -> dict:
    status, annex = api.call(
        "POST", "/annexes", body={"name": name, "count": 1, "lease": lease, "idle_timeout": "30s"}
    )
    assert status == 201, annex
    return annex


def fire_at(annex_id: str, at):
    store = AnnexStore(boto3.client("dynamodb", region_name="us-east-1"), TABLE)
    ec2 = Ec2Inventory(
        boto3.client("ec2", region_name="us-east-1"), STACK, instance_profile_arn=INSTANCE_PROFILE_ARN
    )
    return store, fire(store, ec2, [annex_id], now=at, retention=RETENTION)


def test_a_two_minute_lease_gets_its_timer_at_create_and_ends_to_the_second(api, timers):
    annex = create(api, "2m")
    answered = time.time()
    expiry = parse_time(annex["lease_expires_at"])

    [entry] = timers.sent
    assert json.loads(entry["MessageBody"])["annex_id"] == annex["id"]
    created = parse_time(annex["created_at"])
    # armed by the request itself: the whole lease, less whatever time the request took before sending
    # (whole seconds, counted at the send: visible at the expiry, never before)
    assert expiry.timestamp() - answered <= entry["DelaySeconds"] <= 120

    store, early = fire_at(annex["id"], expiry - SECOND)
    assert early.annexes_ended == []
    store, on_time = fire_at(annex["id"], expiry)
    assert on_time.annexes_ended == [annex["id"]]
    ended = store.get_annex(annex["id"])
    assert ended.state is AnnexState.ENDED
    assert ended.ended_at == expiry
    assert expiry - created == timedelta(minutes=2)


def test_a_lease_just_past_the_look_ahead_is_armed_at_create(api, timers):
    # The lease-check may have armed its window past this end already, from an index read that did not
    # see the new annex yet: create arms it rather than leave it to the minute backstop.
    annex = create(api, "3m5s")
    assert timers.annexes() == [annex["id"]]


def test_a_lease_beyond_the_look_ahead_is_left_to_the_lease_check(api, timers):
    create(api, "10m")  # SQS could hold it (up to 15 min), but the lease-check arms it in time
    create(api, "4h", name="long")
    assert timers.sent == []


def test_a_shortening_to_within_minutes_arms_a_timer_for_the_new_end(api, timers):
    annex = create(api, "1h")
    assert timers.sent == []
    status, shortened = api.call("POST", f"/annexes/{annex['id']}/shorten", body={"to": "2m"})
    assert status == 200, shortened
    [entry] = timers.sent
    body = json.loads(entry["MessageBody"])
    assert body["annex_id"] == annex["id"]
    assert parse_time(body["expires_at"]) == parse_time(shortened["lease_expires_at"])
    assert 0 < entry["DelaySeconds"] <= HORIZON.total_seconds()


def test_an_extension_that_still_ends_within_minutes_arms_a_timer_for_the_new_end(api, timers):
    annex = create(api, "1m")
    status, extended = api.call("POST", f"/annexes/{annex['id']}/extend", body={"by": "1m"})
    assert status == 200, extended
    assert timers.annexes() == [annex["id"], annex["id"]]
    new_end = parse_time(extended["annex"]["lease_expires_at"])
    assert parse_time(json.loads(timers.sent[-1]["MessageBody"])["expires_at"]) == new_end
    # the first timer (the old end) finds the lease extended and changes nothing
    _, old_timer = fire_at(annex["id"], parse_time(annex["lease_expires_at"]))
    assert old_timer.annexes_ended == []
    _, new_timer = fire_at(annex["id"], new_end)
    assert new_timer.annexes_ended == [annex["id"]]


def test_a_timer_that_cannot_be_sent_does_not_fail_the_request(api, monkeypatch):
    with_queue(api, monkeypatch, "https://sqs.us-east-1.amazonaws.com/123456789012/no-such-queue")
    annex = create(api, "2m")
    assert annex["state"] == "requested"  # the minute sweep remains the backstop
