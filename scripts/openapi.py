"""Print the user API's OpenAPI document, generated from the request function's Powertools routes.

`make openapi` writes it to docs/openapi.json; tests/unit/test_openapi.py fails when the two differ. It
describes AnnexApi only, the API researchers call: the heartbeat route is on its own API (HeartbeatApi),
which only the instance role may call and only the agent on each instance does, so it has no spec here
(its body is the heartbeat function's pydantic model).
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

# Every function behind AnnexApi (the user API) whose routes belong in the document.
API_MODULES = ("functions.request.app",)
TITLE = "Annex API"
VERSION = "1"
DESCRIPTION = (
    "Rent EC2 capacity for an HTCondor pool until a deadline. Every route uses AWS_IAM: sign requests with "
    "AWS Signature Version 4 for the service `execute-api` (annex-client does this for you)."
)


def document() -> dict[str, Any]:
    merged: dict[str, Any] | None = None
    for name in API_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that function is not part of this checkout
            raise
        doc = json.loads(
            module.app.get_openapi_json_schema(
                title=TITLE,
                version=VERSION,
                description=DESCRIPTION,
                security_schemes={
                    "sigv4": APIKey(
                        name="Authorization",
                        in_=APIKeyIn.header,
                        description="AWS Signature Version 4 (service execute-api)",
                    )
                },
                security=[{"sigv4": []}],
            )
        )
        if merged is None:
            merged = doc
            continue
        merged["paths"].update(doc.get("paths", {}))
        schemas = merged.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(doc.get("components", {}).get("schemas", {}))
    if merged is None:
        raise SystemExit("no API module could be imported")
    return merged


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
