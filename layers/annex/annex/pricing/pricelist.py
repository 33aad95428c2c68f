"""On-demand prices from the AWS Price List Query API (`pricing:GetProducts`).

The API is served from a few regions only (us-east-1, ap-south-1, eu-central-1) and answers for every
region: the filters name the region (`regionCode`) and the product (Linux, shared tenancy, no
pre-installed software or licence, capacity status Used, i.e. an ordinary running instance). Each answer
is a list of JSON strings, one per product, whose `terms.OnDemand` hold the hourly USD price.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from annex.core.clock import parse_time
from annex.core.errors import AnnexError
from annex.core.models import Market
from annex.pricing.prices import Price, PriceSourceKind

log = logging.getLogger(__name__)

PRICE_LIST_REGIONS = ("us-east-1", "ap-south-1", "eu-central-1")
SERVICE_CODE = "AmazonEC2"
PRODUCT_FILTERS = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "licenseModel": "No License required",
    "capacitystatus": "Used",
}


class PriceListError(AnnexError):
    code = "PriceListError"


def product_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    wanted = {"instanceType": instance_type, "regionCode": region, **PRODUCT_FILTERS}
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in wanted.items()]


def _hourly_usd(product: dict[str, Any]) -> tuple[Decimal, datetime | None] | None:
    """The hourly USD price of one Price List product, and the date it took effect."""
    for term in (product.get("terms", {}).get("OnDemand") or {}).values():
        for dimension in (term.get("priceDimensions") or {}).values():
            if dimension.get("unit") != "Hrs":
                continue
            try:
                usd = Decimal(str(dimension["pricePerUnit"]["USD"]))
            except (KeyError, InvalidOperation):
                continue
            if usd > 0:
                effective = term.get("effectiveDate") or product.get("publicationDate")
                return usd, parse_time(effective) if effective else None
    return None


def parse_products(
    price_list: Iterable[str], *, instance_type: str, region: str, fetched_at: datetime
) -> Price | None:
    """The one price among GetProducts answers for this type and region (products that do not match the
    filters, as the API guarantees they do, are ignored; if several match, the dearest wins and it is
    logged, so an estimate is never low)."""
    found: list[tuple[Decimal, datetime | None, str]] = []
    for raw in price_list:
        product = json.loads(raw)
        attributes = product.get("product", {}).get("attributes", {})
        if attributes.get("instanceType") != instance_type or attributes.get("regionCode") != region:
            continue
        if any(attributes.get(k) != v for k, v in PRODUCT_FILTERS.items()):
            continue
        hourly = _hourly_usd(product)
        if hourly is not None:
            found.append((*hourly, str(product.get("product", {}).get("sku", ""))))
    if not found:
        return None
    if len(found) > 1:
        log.warning("several on-demand products for %s in %s: %s", instance_type, region, found)
    usd, effective, sku = max(found, key=lambda f: f[0])
    return Price(
        region=region,
        instance_type=instance_type,
        market=Market.ON_DEMAND,
        usd_per_hour=usd,
        source=PriceSourceKind.PRICE_LIST,
        source_detail=f"pricing:GetProducts AmazonEC2 sku {sku} "
        "(Linux, Shared, no pre-installed software, Used)",
        as_of=effective or fetched_at,
        fetched_at=fetched_at,
    )


def on_demand_prices(
    pricing: Any, region: str, instance_types: Sequence[str], *, now: datetime
) -> tuple[list[Price], dict[str, str]]:
    """One GetProducts query per type (paginated). Returns the prices found and, per type, why none was."""
    prices: list[Price] = []
    missing: dict[str, str] = {}
    for instance_type in instance_types:
        answers: list[str] = []
        kwargs: dict[str, Any] = {
            "ServiceCode": SERVICE_CODE,
            "Filters": product_filters(instance_type, region),
            "FormatVersion": "aws_v1",
            "MaxResults": 100,
        }
        try:
            while True:
                page = pricing.get_products(**kwargs)
                answers.extend(page.get("PriceList", []))
                if not page.get("NextToken"):
                    break
                kwargs["NextToken"] = page["NextToken"]
        except (ClientError, BotoCoreError) as exc:
            log.warning("GetProducts failed for %s: %s", instance_type, exc)
            missing[instance_type] = f"GetProducts failed: {exc}"
            continue
        price = parse_products(answers, instance_type=instance_type, region=region, fetched_at=now)
        if price is None:
            missing[instance_type] = "the Price List has no Linux on-demand product for it here"
        else:
            prices.append(price)
    return prices, missing
