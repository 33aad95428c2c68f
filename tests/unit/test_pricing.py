"""Prices from AWS: the Price List Query API and the spot price history, through botocore's Stubber
(which checks every request against the real service model), and the shipped snapshot."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import boto3
import pytest
from annex.core.models import Market
from annex.pricing.pricelist import PRODUCT_FILTERS, on_demand_prices, product_filters
from annex.pricing.prices import load_snapshot, snapshot_book
from annex.pricing.spot import spot_prices
from botocore.stub import Stubber

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def product(itype: str, usd: str, *, region: str = "us-east-1", **overrides: str) -> str:
    """One PriceList entry as GetProducts returns it (a JSON string), trimmed to the fields used."""
    sku = f"SKU{itype.replace('.', '')}"
    attributes = {
        "instanceType": itype,
        "regionCode": region,
        "location": "US East (N. Virginia)",
        "servicecode": "AmazonEC2",
        **PRODUCT_FILTERS,
        **overrides,
    }
    term = f"{sku}.JRTCKXETXF"
    return json.dumps(
        {
            "product": {"productFamily": "Compute Instance", "attributes": attributes, "sku": sku},
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    term: {
                        "priceDimensions": {
                            f"{term}.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "endRange": "Inf",
                                "beginRange": "0",
                                "appliesTo": [],
                                "description": f"${usd} per On Demand Linux {itype} Instance Hour",
                                "rateCode": f"{term}.6YS6EN2CT7",
                                "pricePerUnit": {"USD": usd},
                            }
                        },
                        "sku": sku,
                        "effectiveDate": "2026-11-01T00:00:00Z",
                        "offerTermCode": "JRTCKXETXF",
                        "termAttributes": {},
                    }
                }
            },
            "version": "20261101000000",
            "publicationDate": "2026-11-05T12:00:00Z",
        }
    )


@pytest.fixture
def pricing():
    client = boto3.client("pricing", region_name="us-east-1")
    with Stubber(client) as stub:
        yield client, stub


def expect_products(stub: Stubber, itype: str, answers: list[str], **extra) -> None:
    stub.add_response(
        "get_products",
        {"PriceList": answers, "FormatVersion": "aws_v1", **extra},
        {
            "ServiceCode": "AmazonEC2",
            "Filters": product_filters(itype, "us-east-1"),
            "FormatVersion": "aws_v1",
            "MaxResults": 100,
        },
    )


def test_on_demand_price_comes_from_the_price_list_with_its_date(pricing):
    client, stub = pricing
    expect_products(stub, "c7i.xlarge", [product("c7i.xlarge", "0.1785000000")])
    prices, missing = on_demand_prices(client, "us-east-1", ["c7i.xlarge"], now=NOW)
    assert missing == {}
    [p] = prices
    assert p.usd_per_hour == Decimal("0.1785")
    assert p.market is Market.ON_DEMAND
    assert p.source == "aws-price-list"
    assert "GetProducts" in p.source_detail
    assert p.as_of == datetime(2026, 11, 1, tzinfo=UTC)
    assert p.fetched_at == NOW


def test_the_filters_ask_for_plain_linux_shared_tenancy_in_use():
    fields = {f["Field"]: f["Value"] for f in product_filters("c7i.xlarge", "eu-west-1")}
    assert fields == {
        "instanceType": "c7i.xlarge",
        "regionCode": "eu-west-1",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "licenseModel": "No License required",
        "capacitystatus": "Used",
    }


def test_products_that_do_not_match_are_ignored_and_a_missing_type_is_named(pricing):
    client, stub = pricing
    # an answer for another OS (which the filters exclude, but a parser must not trust blindly)
    expect_products(stub, "c7i.xlarge", [product("c7i.xlarge", "0.50", operatingSystem="Windows")])
    prices, missing = on_demand_prices(client, "us-east-1", ["c7i.xlarge"], now=NOW)
    assert prices == []
    assert "c7i.xlarge" in missing


def test_pages_are_followed(pricing):
    client, stub = pricing
    expect_products(stub, "c7i.xlarge", [], NextToken="page2")
    stub.add_response(
        "get_products",
        {"PriceList": [product("c7i.xlarge", "0.1785")], "FormatVersion": "aws_v1"},
        {
            "ServiceCode": "AmazonEC2",
            "Filters": product_filters("c7i.xlarge", "us-east-1"),
            "FormatVersion": "aws_v1",
            "MaxResults": 100,
            "NextToken": "page2",
        },
    )
    prices, _ = on_demand_prices(client, "us-east-1", ["c7i.xlarge"], now=NOW)
    assert [p.usd_per_hour for p in prices] == [Decimal("0.1785")]


def test_an_api_error_names_the_type_and_keeps_the_others(pricing):
    client, stub = pricing
    stub.add_client_error("get_products", service_error_code="ThrottlingException", http_status_code=400)
    expect_products(stub, "m7i.xlarge", [product("m7i.xlarge", "0.2016")])
    prices, missing = on_demand_prices(client, "us-east-1", ["c7i.xlarge", "m7i.xlarge"], now=NOW)
    assert [p.instance_type for p in prices] == ["m7i.xlarge"]
    assert "ThrottlingException" in missing["c7i.xlarge"]


def test_spot_price_is_the_latest_per_zone_and_the_dearest_zone_heads_it():
    ec2 = boto3.client("ec2", region_name="us-east-1")
    history = [
        {
            "AvailabilityZone": "us-east-1a",
            "InstanceType": "c7i.xlarge",
            "ProductDescription": "Linux/UNIX",
            "SpotPrice": "0.0700",
            "Timestamp": datetime(2026, 12, 3, 9, 0, tzinfo=UTC),
        },
        {
            "AvailabilityZone": "us-east-1a",
            "InstanceType": "c7i.xlarge",
            "ProductDescription": "Linux/UNIX",
            "SpotPrice": "0.0600",
            "Timestamp": datetime(2026, 12, 3, 8, 0, tzinfo=UTC),
        },
        {
            "AvailabilityZone": "us-east-1b",
            "InstanceType": "c7i.xlarge",
            "ProductDescription": "Linux/UNIX",
            "SpotPrice": "0.0650",
            "Timestamp": datetime(2026, 12, 3, 7, 0, tzinfo=UTC),
        },
    ]
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_spot_price_history",
            {"SpotPriceHistory": history},
            {
                "InstanceTypes": ["c7i.xlarge"],
                "ProductDescriptions": ["Linux/UNIX"],
                "StartTime": NOW,
                "EndTime": NOW,
                "MaxResults": 1000,
            },
        )
        [p] = spot_prices(ec2, "us-east-1", ["c7i.xlarge"], now=NOW)
    assert p.zones == {"us-east-1a": Decimal("0.0700"), "us-east-1b": Decimal("0.0650")}
    assert p.usd_per_hour == Decimal("0.0700")
    assert p.market is Market.SPOT
    assert p.as_of == datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def test_the_shipped_snapshot_is_dated_and_sourced():
    snap = load_snapshot()
    assert snap.source
    assert snap.as_of.year >= 2024
    book = snapshot_book(snap.region, snap)
    p = book.get("c7i.xlarge", Market.ON_DEMAND)
    assert p is not None
    assert p.source == "snapshot"
    assert p.as_of == snap.as_of
    assert snapshot_book("eu-west-1", snap).get("c7i.xlarge", Market.ON_DEMAND) is None
