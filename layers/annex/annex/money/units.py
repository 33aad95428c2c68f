"""US dollars as exact decimals. No imports from the rest of the package (the models use these)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

# The most any one budget may be, whatever the administrator allows (a typo guard: 1e9 is not a budget).
ABSOLUTE_MAX_BUDGET = Decimal("1000000")
_BUDGET_TEXT = re.compile(r"^\d{1,30}(\.\d{1,2})?$")


def _plain(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_budget(value: object) -> Decimal:
    """A budget in USD: a JSON number or a string of digits with at most two decimals ("50", "12.5",
    "99.99"). Not a currency symbol, code, exponent, NaN, infinity, zero or a negative amount."""
    if isinstance(value, bool):
        raise ValueError("a budget is an amount in US dollars, such as 50 or 12.50")
    if isinstance(value, int | float | Decimal):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ValueError("a budget is an amount in US dollars, such as 50 or 12.50")
    if text.lower() in ("nan", "inf", "-inf", "infinity", "+inf"):
        raise ValueError("a budget must be a finite amount in US dollars")
    if text.startswith("-"):
        raise ValueError("a budget must be more than zero")
    if not _BUDGET_TEXT.match(text):
        raise ValueError(
            f"'{text[:40]}' is not an amount in US dollars: give digits with at most two decimals, "
            "such as 50 or 12.50 (no currency sign or code)"
        )
    try:
        amount = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
        raise ValueError("a budget is an amount in US dollars, such as 50 or 12.50") from exc
    if amount <= 0:
        raise ValueError("a budget must be more than zero")
    if amount > ABSOLUTE_MAX_BUDGET:
        raise ValueError(f"a budget may be at most {_plain(ABSOLUTE_MAX_BUDGET)} USD")
    return amount


# A dollar figure: Decimal inside, a decimal string outside (exact in JSON and in DynamoDB alike).
Usd = Annotated[
    Decimal,
    PlainSerializer(_plain, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?$", "examples": ["12.34"]}),
]
BudgetIn = Annotated[
    Decimal,
    BeforeValidator(parse_budget),
    PlainSerializer(_plain, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "oneOf": [{"type": "string", "pattern": r"^\d{1,7}(\.\d{1,2})?$"}, {"type": "number"}],
            "description": "US dollars, more than zero, at most two decimals: 50, 12.50.",
            "examples": ["50"],
        }
    ),
]
