"""Secrets Manager: whether the pool-token secret still holds the placeholder the stack created it with.

CloudFormation creates the secret with one version (the placeholder, labelled AWSCURRENT). Storing a
token (`put-secret-value`, or `update-secret --secret-string`) adds a version and moves AWSCURRENT to it,
and AWSPREVIOUS to the placeholder: from then on DescribeSecret's `VersionIdsToStages` (the versions that
carry a staging label) lists at least two. So one labelled version or none means no token was ever
stored. DescribeSecret never returns the value: the launch role cannot read the token (the secret's
resource policy lets only the instance role read it)."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)


class PoolTokenSecret:
    """The stack's pool-token secret. `placeholder()` asks Secrets Manager until a token has been stored
    once (a stored token never turns back into the placeholder), then answers from memory."""

    def __init__(self, client: Any, secret_arn: str) -> None:
        self._sm = client
        self.arn = secret_arn
        self._stored = False

    def placeholder(self) -> bool:
        """True only when Secrets Manager says no token was ever stored. Fails open (False, logged) when
        it cannot be asked: the instance itself refuses a placeholder token at boot."""
        if self._stored:
            return False
        try:
            described = self._sm.describe_secret(SecretId=self.arn)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not check the pool token secret %s: %s", self.arn, exc)
            return False
        labelled = [v for v, stages in (described.get("VersionIdsToStages") or {}).items() if stages]
        self._stored = len(labelled) >= 2
        return not self._stored
