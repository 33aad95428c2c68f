"""HTTP concerns shared by the API functions that are not about the domain."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from http import HTTPStatus
from typing import Any

from annex.models import ErrorBody


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def non_json_refusal(event: dict[str, Any]) -> dict[str, Any] | None:
    """The 415 answer for a body declared as anything but JSON (None: go on)."""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    content_type = headers.get("content-type")
    if not event.get("body") or not content_type or is_json(content_type):
        return None
    error = ErrorBody(
        error="UnsupportedMediaType",
        message=f"send the body as application/json, not {content_type.split(';')[0].strip()}",
    )
    return {
        "statusCode": HTTPStatus.UNSUPPORTED_MEDIA_TYPE.value,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(error.model_dump(mode="json")),
        "isBase64Encoded": False,
    }


def json_only[Handler: Callable[..., dict[str, Any]]](handler: Handler) -> Handler:
    """The API speaks JSON only. Refuse other bodies before routing: Powertools' validation would try to
    parse them as forms or multipart (and a multipart body without a boundary raises)."""

    @wraps(handler)
    def wrapper(event: dict[str, Any], context: Any) -> dict[str, Any]:
        refusal = non_json_refusal(event)
        return refusal if refusal is not None else handler(event, context)

    return wrapper  # type: ignore[return-value]
