"""A scripted stand-in for the client's HTTP layer (annex_client.transport.send), and API payloads."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from annex_client import commands, transport

ENDPOINT = "https://abc123defg.execute-api.eu-west-1.amazonaws.com/v1"
ALICE = "arn:aws:iam::123456789012:user/alice"

HEALTH = {
    "status": "ok",
    "caller": ALICE,
    "is_admin": False,
    "limits": {
        "allowed_instance_types": ["c7i.xlarge", "c7i.2xlarge", "m5.large"],
        "default_instance_type": "c7i.xlarge",
        "max_instances_per_annex": 10,
        "max_live_instances_per_owner": 12,
        "max_lease_seconds": 86400,
        "default_lease_seconds": 14400,
        "min_lease_seconds": 600,
        "default_idle_timeout_seconds": 1200,
        "min_idle_timeout_seconds": 300,
    },
    "sweeps": [
        {"name": "lease-check", "last_success_at": None},
        {"name": "idle-reap", "last_success_at": None},
    ],
}


def annex(
    name: str = "bio",
    annex_id: str = "ax-0123456789abcdef",
    *,
    state: str = "requested",
    created_at: str = "2026-11-22T14:00:00Z",
    **extra: Any,
) -> dict[str, Any]:
    record = {
        "id": annex_id,
        "name": name,
        "owner": ALICE,
        "state": state,
        "count": 3,
        "instance_types": ["c7i.xlarge"],
        "market": "on-demand",
        "lease_expires_at": "2026-11-22T18:00:00Z",
        "idle_timeout_seconds": 900,
        "created_at": created_at,
        "updated_at": created_at,
        "client_token": None,
        "version": 1,
        "tags": {},
        "launched_count": 0,
        "launch_note": None,
        "end_reason": None,
        "ended_at": None,
    }
    record.update(extra)
    return record


# What POST /estimates answers for a request, as the API computes it: the dearest of the types at these
# prices for the whole lease (no price for a type the stack has no price for), no monthly budget.
PRICES = {"c7i.xlarge": "0.1785", "c7i.2xlarge": "0.357"}


def quote_for(body: dict[str, Any]) -> dict[str, Any]:
    if "extend" in body:  # the API prices the live instances at today's rate; tests that check it say so
        return {**quote_for({"request": {"count": 1}}), "adds_usd": None}
    request = body["request"]
    types = [request.get("instance_type") or HEALTH["limits"]["default_instance_type"]]
    price = PRICES.get(types[0])
    hours = {"4h": 4, "1h": 1, "2h": 2, "30m": 0.5}.get(request.get("lease"), 4)
    adds = None if price is None else f"{request['count'] * hours * float(price):.2f}"
    as_price = None
    if price is not None:
        as_price = {
            "region": "eu-west-1",
            "instance_type": types[0],
            "market": request.get("market"),
            "usd_per_hour": price,
            "zones": {},
            "source": "aws-price-list",
            "source_detail": "",
            "as_of": "2026-11-01T00:00:00Z",
            "fetched_at": "2026-12-03T06:00:00Z",
        }
    return {
        "adds_usd": adds,
        "usd_per_hour": None,
        "price": as_price,
        "month": "2026-11",
        "month_spent_usd": "0",
        "month_committed_usd": "0",
        "monthly_budget_usd": None,
        "remaining_usd": None,
        "allowed": True,
        "refusal": None,
        "note": "an estimate",
    }


@dataclass
class Call:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


@dataclass
class Wire:
    """Answers by (method, path): each route holds a queue of answers, the last one repeats. An answer is
    (status, body) or an exception to raise (transport.NetworkError, KeyboardInterrupt)."""

    routes: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    @classmethod
    def install(cls, monkeypatch, *, endpoint: str = ENDPOINT) -> Wire:
        wire = cls()
        monkeypatch.setattr(transport, "send", wire)
        monkeypatch.setattr(commands, "_sleep", lambda seconds: None)
        monkeypatch.setenv("ANNEX_ENDPOINT", endpoint)
        return wire

    def on(self, method: str, path: str, *answers: Any) -> Wire:
        self.routes[(method, path)] = list(answers)
        return self

    def __call__(self, method, url, headers, body, timeout):
        parts = urlsplit(url)
        path = parts.path.removeprefix("/v1")
        sent = json.loads(body) if body is not None else None
        self.calls.append(Call(method, path, parts.query, dict(headers), sent))
        queue = self.routes.get((method, path))
        if not queue and (method, path) == ("POST", "/estimates"):
            queue = [(200, quote_for(sent))]
        if not queue:
            raise AssertionError(f"unexpected request {method} {path}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, BaseException):
            raise answer
        status, payload = answer
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return status, {"content-type": "application/json"}, raw

    def paths(self, method: str | None = None) -> list[str]:
        return [c.path for c in self.calls if method is None or c.method == method]


class Terminal(io.StringIO):
    """stdin that says it is a terminal, with the user's answers."""

    def isatty(self) -> bool:
        return True
