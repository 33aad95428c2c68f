"""The prices function as deployed: its handler on a schedule event, EC2 (moto) for the spot history, and
the Price List Query API through botocore's Stubber (moto has no Price List API): a scheduled run stores
an on-demand price for every type the stack allows, which the API's estimates then read."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from annex.aws import clients
from annex_local.template import resolve_environment
from botocore.stub import ANY, Stubber

from tests.integration.conftest import TABLE
from tests.unit.test_pricing import product

EVENTS = Path(__file__).resolve().parents[2] / "events"


@pytest.fixture
def prices(monkeypatch, ddb, ec2):
    env = resolve_environment("PricesFunction", table_name=TABLE, stack_name="annex-test")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    module = importlib.import_module("functions.prices.app")
    for fn in (module.settings, module.pricing, module.store):
        fn.cache_clear()
    clients.client.cache_clear()
    yield module
    for fn in (module.settings, module.pricing, module.store):
        fn.cache_clear()


def test_a_scheduled_run_stores_each_allowed_types_on_demand_price(prices):
    # Given the Price List answers for every type the stack allows
    types = prices.settings().allowed_instance_types
    event = json.loads((EVENTS / "prices-schedule.json").read_text())
    with Stubber(prices.pricing()) as stub:
        for itype in types:
            stub.add_response(
                "get_products",
                {"PriceList": [product(itype, "0.2000")], "FormatVersion": "aws_v1"},
                {"ServiceCode": "AmazonEC2", "Filters": ANY, "FormatVersion": "aws_v1", "MaxResults": ANY},
            )
        # When the schedule fires
        from annex_local.events import FakeContext

        summary = prices.handler(event, FakeContext("prices"))
        stub.assert_no_pending_responses()

    # Then every allowed type has a stored on-demand price
    assert summary["on_demand"] == len(types)
    assert summary["failures"] == {}
