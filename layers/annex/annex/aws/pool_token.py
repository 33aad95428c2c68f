"""SSM Parameter Store: whether the stack's pool-token parameter exists, from its metadata only.

The token is a SecureString parameter (`/annex/<stack>/pool-token` by default) that the stack never
creates (CloudFormation cannot create SecureString parameters): the administrator, or the seed node, puts
it. Until then, every instance would boot, find no token and power off unjoined, so the launch function
asks first. It asks with DescribeParameters filtered by the exact name, which returns metadata (name, type,
version), never the value: the launch role may not read the token (its policy denies GetParameter* on it;
with the AWS-managed aws/ssm key a GetParameter alone would decrypt)."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)


class PoolTokenParameter:
    """The stack's pool-token parameter. `missing()` asks SSM until the parameter has been seen once (a
    stored token is replaced by `--overwrite`, never deleted by Annex), then answers from memory."""

    def __init__(self, client: Any, name: str) -> None:
        self._ssm = client
        self.name = name
        self._seen = False

    def missing(self) -> bool:
        """True only when SSM says no such parameter exists. Fails open (False, logged) when it cannot be
        asked: the instance itself powers off, reporting why, when it finds no token at boot."""
        if self._seen:
            return False
        try:
            found = self._ssm.describe_parameters(
                ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": [self.name]}]
            ).get("Parameters", [])
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not check the pool token parameter %s: %s", self.name, exc)
            return False
        self._seen = any(p.get("Name") == self.name for p in found)
        if self._seen and not all(p.get("Type") == "SecureString" for p in found):
            log.warning("the pool token parameter %s is not a SecureString: store it encrypted", self.name)
        return not self._seen
