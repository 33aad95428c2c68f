"""RunInstances throttled mid-launch (RequestLimitExceeded: EC2's RunInstances request bucket is 5 calls
with 2 a second refilled) neither loses nor duplicates a launch: on an EC2 that honours client tokens
(tests.integration.test_launch.ClientTokens), the annex ends with exactly `count` instances in EC2 and one
record each, whether the throttling outlasts the retries (the stream delivery fails and is redelivered) or
a launch's answer is lost after EC2 launched it (the retry repeats the client token)."""

from __future__ import annotations

from typing import Any

import pytest
from annex.aws import clients
from annex.core.models import AnnexState
from annex.store import AnnexStore
from annex_local.pool import put_requested_annex
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import ConnectionClosedError

from tests.integration.conftest import ALICE, TABLE
from tests.integration.test_launch import ClientTokens, Ec2Faults, instances_of

COUNT = 250  # three RunInstances calls: 100, 100, 50


@pytest.fixture
def faults(launch) -> Ec2Faults:
    return Ec2Faults()


@pytest.fixture
def store(ddb) -> AnnexStore:
    return AnnexStore(ddb, TABLE)


def assert_exactly_once(ec2, store, annex_id: str) -> None:
    after = store.get_annex(annex_id)
    in_ec2 = [i["InstanceId"] for i in instances_of(ec2, annex_id)]
    records = [i.instance_id for i in store.list_instances(annex_id)]
    assert (after.state, after.launched_count) == (AnnexState.RUNNING, COUNT)
    assert len(in_ec2) == len(set(in_ec2)) == COUNT
    assert sorted(records) == sorted(in_ec2)  # one record per instance, no more, no less


def test_throttling_that_outlasts_the_retries_mid_launch_resumes_without_a_duplicate(
    launch,
    faults,
    ec2,
    store,
):
    # Given an EC2 that honours client tokens, and an annex of 250 (RunInstances 100 + 100 + 50)
    tokens = ClientTokens(clients.ec2_launch())
    sleeps: list[float] = []
    launch.sleep_with(sleeps.append)
    annex = put_requested_annex(store, owner=ALICE, name="big-run", count=COUNT)
    records = launch.pending()
    # ...which throttles the second call six times in a row (every attempt the launcher makes)
    faults.before_launch += [lambda: None, lambda: faults.scripted.extend(["RequestLimitExceeded"] * 6)]

    # When the delivery fails after the first 100 launched, and the stream delivers it again
    with pytest.raises(BatchProcessingError, match="All records failed"):  # Lambda retries the batch
        launch.invoke(records)
    assert store.get_annex(annex.id).state is AnnexState.LAUNCHING
    assert len(instances_of(ec2, annex.id)) == 100
    assert launch.invoke(records) == {"batchItemFailures": []}

    # Then the annex has exactly 250 instances, one record each, and backed off between attempts
    assert_exactly_once(ec2, store, annex.id)
    assert len(sleeps) == 5
    throttled = [r for r in faults.launches() if r["MaxCount"] == 100][1:7]
    assert len({r["ClientToken"] for r in throttled}) == 1  # the same call each time
    assert tokens.repeats == 0


def test_a_launch_answer_lost_after_ec2_launched_is_retried_with_its_token_and_launches_nothing_more(
    launch,
    faults,
    ec2,
    store,
):
    # Given an EC2 that honours client tokens, and whose answer to the second launch call is lost on
    # the way back (EC2 launched the 100 instances; the connection closed before the launcher heard)
    tokens = ClientTokens(clients.ec2_launch())
    launch.sleep_with(lambda _s: None)
    lost: list[str] = []

    def lose_second_answer(model: Any, http_response: Any, **_: Any) -> None:
        if model.name == "RunInstances" and http_response.status_code < 300:
            lost.append(model.name)
            if len(lost) == 2:
                raise ConnectionClosedError(endpoint_url="https://ec2.us-east-1.amazonaws.com")

    clients.ec2_launch().meta.events.register("after-call.ec2", lose_second_answer)
    annex = put_requested_annex(store, owner=ALICE, name="big-run", count=COUNT)

    # When the launch runs
    launch.deliver()

    # Then the retry got the first answer back instead of 100 more instances
    assert tokens.repeats == 1
    assert_exactly_once(ec2, store, annex.id)
