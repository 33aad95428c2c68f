"""What the local stack needs to serve an API Gateway HTTP API (the template's HeartbeatApi) as deployed:
the payload format 2.0 event API Gateway hands a Lambda integration on an IAM-authorized route, and
identity-based access control for execute-api:Invoke.

An HTTP API has no resource policy: whether a signed caller may invoke a route is decided by the
caller's own IAM policies alone. Locally those are the policies the repository gives each identity —
the instance role's policies from template.yaml (resolved with the local stack's references) and, for the
local users alice, bob and admin, the researchers' policy from the README (statement `AnnexUserRoutes`)
— evaluated as IAM does for one action: an explicit Deny wins, else an Allow whose Resource matches,
else an implicit deny. A caller refused is answered as API Gateway answers it: 403
`{"message":"Forbidden"}`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from annex_local.events import ACCOUNT
from annex_local.template import TEMPLATE, load_template, principal_arn

README = TEMPLATE.parent / "README.md"
RESEARCHER_SID = "AnnexUserRoutes"
INVOKE = "execute-api:Invoke"


def http_event(
    method: str,
    path: str,
    *,
    caller_arn: str | None,
    body: str | None = None,
    headers: list[tuple[str, str]] | dict[str, str] | None = None,
    query: str | dict[str, list[str]] | None = None,
    stage: str = "v1",
    route_key: str | None = None,
    access_key: str | None = None,
    api_id: str = "local-heartbeat",
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """An HTTP API payload 2.0 event for an IAM-authorized route. As API Gateway builds it: header names
    lower-cased and repeated values joined with commas, `rawPath` keeps a named stage, the verified
    caller is in `requestContext.authorizer.iam` (there is no `identity` block), and
    `queryStringParameters` joins repeated values with commas (`rawQueryString` keeps them apart)."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if body is not None and not any(k.lower() == "content-type" for k, _ in pairs):
        pairs.append(("content-type", "application/json"))
    joined: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    raw_query = query if isinstance(query, str) else urlencode(query or {}, doseq=True)
    values: dict[str, list[str]] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        values.setdefault(name, []).append(value)
    params = {k: ",".join(v) for k, v in values.items()}
    raw_path = path if stage == "$default" else f"/{stage}{path}"
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key or f"{method.upper()} {path}",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": joined,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": api_id,
            "authorizer": {
                "iam": {
                    "accessKey": access_key,
                    "accountId": ACCOUNT if caller_arn else None,
                    "callerId": caller_arn.rsplit("/", 1)[-1] if caller_arn else None,
                    "cognitoIdentity": None,
                    "principalOrgId": None,
                    "userArn": caller_arn,
                    "userId": caller_arn.rsplit("/", 1)[-1] if caller_arn else None,
                }
            },
            "domainName": f"{api_id}.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": api_id,
            "http": {
                "method": method.upper(),
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": joined.get("user-agent", "annex-tests"),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key or f"{method.upper()} {path}",
            "stage": stage,
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if params or raw_query:
        event["queryStringParameters"] = params or None
    if body is not None:
        event["body"] = body
    return event


# --- identity-based access ---------------------------------------------------------------------------


def _arn_pattern(pattern: str) -> re.Pattern[str]:
    """An IAM Resource pattern: `*` any run of characters (slashes included), `?` any one."""
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z"
    )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _action_matches(actions: Any, action: str) -> bool:
    return any(_arn_pattern(str(a).lower()).match(action.lower()) for a in _as_list(actions))


@dataclass
class IdentityPolicies:
    """Each principal's policy statements (`aws:PrincipalArn` -> statements)."""

    statements: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, principal: str, statements: list[dict[str, Any]]) -> None:
        self.statements.setdefault(principal, []).extend(statements)

    def allows(self, caller_arn: str, action: str, resource: str) -> bool:
        relevant = [
            st
            for st in self.statements.get(principal_arn(caller_arn), [])
            if _action_matches(st.get("Action"), action)
            and any(_arn_pattern(str(r)).match(resource) for r in _as_list(st.get("Resource")))
        ]
        if any(st.get("Effect") == "Deny" for st in relevant):
            return False
        return any(st.get("Effect") == "Allow" for st in relevant)


def _substitute(value: Any, refs: dict[str, str]) -> str:
    """A `!Sub` string (or a plain string) with ${X}, ${X.Arn} and pseudo parameters from `refs`."""
    text = value["Fn::Sub"] if isinstance(value, dict) and "Fn::Sub" in value else value
    if not isinstance(text, str):
        raise ValueError(f"the local stack cannot resolve the policy value {value!r}")

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in refs:
            raise KeyError(f"cannot resolve ${{{name}}} locally")
        return refs[name]

    return re.sub(r"\$\{([^}]+)\}", one, text)


def _resolved(statements: list[dict[str, Any]], refs: dict[str, str]) -> list[dict[str, Any]]:
    """The statements about execute-api:Invoke (the only action judged here), resources resolved."""
    return [
        {**st, "Resource": [_substitute(r, refs) for r in _as_list(st.get("Resource", []))]}
        for st in statements
        if _action_matches(st.get("Action"), INVOKE)
    ]


def role_statements(role: str, refs: dict[str, str], path: Path = TEMPLATE) -> list[dict[str, Any]]:
    """Every statement the template attaches to the role `role` (its inline Policies and every
    AWS::IAM::Policy naming it), resolved with `refs`."""
    resources = load_template(path)["Resources"]
    out: list[dict[str, Any]] = []
    for policy in resources[role]["Properties"].get("Policies", []):
        out += policy["PolicyDocument"]["Statement"]
    for resource in resources.values():
        props = resource.get("Properties", {})
        if resource.get("Type") == "AWS::IAM::Policy" and {"Ref": role} in props.get("Roles", []):
            out += props["PolicyDocument"]["Statement"]
    return _resolved(out, refs)


def researcher_statements(region: str, api_id: str, readme: Path = README) -> list[dict[str, Any]]:
    """The README's policy for researchers (the statement `AnnexUserRoutes`), with its placeholders
    REGION, ACCOUNT and API_ID filled for the local stack's user API."""
    for block in re.findall(r"```json\n(.*?)```", readme.read_text(), flags=re.DOTALL):
        if f'"Sid": "{RESEARCHER_SID}"' not in block:
            continue
        document = json.loads(block)
        filled = []
        for st in document["Statement"]:
            resources = [
                r.replace("REGION", region).replace("ACCOUNT", ACCOUNT).replace("API_ID", api_id)
                for r in _as_list(st["Resource"])
            ]
            filled.append({**st, "Resource": resources})
        return filled
    raise ValueError(f"{readme.name}: no researchers' policy (statement {RESEARCHER_SID}) found")


def invoke_arn(region: str, api_id: str, stage: str, method: str, path: str) -> str:
    return f"arn:aws:execute-api:{region}:{ACCOUNT}:{api_id}/{stage}/{method.upper()}{path}"
