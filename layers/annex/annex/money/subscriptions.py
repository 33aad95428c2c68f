"""E-mail notices for one researcher: an SNS e-mail subscription to the notice topic whose filter policy
(on the message body, which is the EventBridge event) admits only events about annexes they own. The
owner is the caller's own ARN, decided here, never taken from the request."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from annex.core.errors import PolicyViolation
from annex.money.models import NotificationSubscription


def owner_filter(owner: str) -> dict[str, Any]:
    return {"detail": {"owner": [owner]}}


def subscribe_owner(sns: Any, topic_arn: str, *, owner: str, email: str) -> NotificationSubscription:
    """Idempotent: SNS answers the same subscription for the same topic, endpoint and attributes."""
    try:
        resp = sns.subscribe(
            TopicArn=topic_arn,
            Protocol="email",
            Endpoint=email,
            Attributes={
                "FilterPolicyScope": "MessageBody",
                "FilterPolicy": json.dumps(owner_filter(owner)),
            },
            ReturnSubscriptionArn=True,
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "InvalidParameter":
            raise PolicyViolation(
                f"SNS refused the address: {exc.response['Error'].get('Message', '')}", field="email"
            ) from exc
        raise
    arn = str(resp.get("SubscriptionArn", "pending confirmation"))
    return NotificationSubscription(
        email=email,
        owner=owner,
        subscription=arn,
        message=f"AWS sends a confirmation e-mail to {email}; once confirmed, it receives the notices of "
        "your annexes (lease ending, ended, budget 80% spent) and no one else's",
    )
