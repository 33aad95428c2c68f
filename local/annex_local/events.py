"""API Gateway REST (v1) proxy events, as API Gateway builds them for an IAM-authorized route.
Used by the tests and by the local gateway, so both feed the handlers the same shape. And the EC2 events
the local "EC2" puts on the default bus when it interrupts a spot instance (`ec2_spot_entries`), in the
shapes AWS documents (events/spot-*.json)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

ACCOUNT = "123456789012"


def rest_event(
    method: str,
    path: str,
    *,
    caller_arn: str | None,
    body: Any = None,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    resource: str | None = None,
    path_parameters: dict[str, str] | None = None,
    stage: str = "v1",
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """`body` may be a str (sent as is) or anything JSON-serializable."""
    raw_body = body if isinstance(body, str) or body is None else json.dumps(body)
    hdrs = (
        {"Content-Type": "application/json", **(headers or {})}
        if raw_body is not None
        else dict(headers or {})
    )
    now = datetime.now(UTC)
    return {
        "resource": resource or path,
        "path": path,
        "httpMethod": method,
        "headers": hdrs,
        "multiValueHeaders": {k: [v] for k, v in hdrs.items()},
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT,
            "resourceId": "local",
            "stage": stage,
            "requestId": str(uuid.uuid4()),
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "identity": {
                "caller": caller_arn,
                "user": caller_arn,
                "userArn": caller_arn,
                "accountId": ACCOUNT if caller_arn else None,
                "accessKey": None,
                "sourceIp": source_ip,
                "userAgent": hdrs.get("User-Agent", "annex-tests"),
                "cognitoIdentityPoolId": None,
                "cognitoIdentityId": None,
                "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None,
            },
            "path": f"/{stage}{path}",
            "resourcePath": resource or path,
            "httpMethod": method,
            "apiId": "local",
            "protocol": "HTTP/1.1",
            "domainName": "localhost",
        },
        "body": raw_body,
        "isBase64Encoded": False,
    }


def ec2_event_entry(detail_type: str, instance_id: str, detail: dict[str, Any], *, at: datetime) -> Any:
    """One PutEvents entry as EC2 emits it on the default bus: source aws.ec2, the instance's ARN in
    resources (EventBridge adds version, id, account and region)."""
    return {
        "Source": "aws.ec2",
        "DetailType": detail_type,
        "Time": at,
        "Resources": [f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{instance_id}"],
        "Detail": json.dumps({"instance-id": instance_id, **detail}),
    }


def spot_warning_entry(instance_id: str, *, at: datetime) -> Any:
    """EC2 Spot Instance Interruption Warning: the two-minute notice (instance-action terminate)."""
    return ec2_event_entry(
        "EC2 Spot Instance Interruption Warning", instance_id, {"instance-action": "terminate"}, at=at
    )


def state_change_entry(instance_id: str, state: str, *, at: datetime) -> Any:
    """EC2 Instance State-change Notification (shutting-down, terminated, ...)."""
    return ec2_event_entry("EC2 Instance State-change Notification", instance_id, {"state": state}, at=at)


class FakeContext:
    """The parts of a Lambda context Powertools reads."""

    def __init__(self, function_name: str = "annex-local") -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000
