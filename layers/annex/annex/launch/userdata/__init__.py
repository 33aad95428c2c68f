"""User data for annex instances: the boot script (annex-node.sh) with the heartbeat agent
(annex-heartbeat.sh) inside, rendered per annex. Values are shell-quoted; the pool token is never an
input: only the secret's ARN is, and the instance reads the token itself at boot."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from importlib import resources

from annex.core.clock import to_epoch
from annex.core.config import LaunchSettings
from annex.core.models import Annex

USER_DATA_LIMIT = 16 * 1024  # bytes EC2 accepts before base64
AGENT_DELIMITER = "ANNEX_AGENT_EOF"
_PLACEHOLDER = re.compile(r"@@([A-Z_]+)@@")
_COMMENT = re.compile(r"^\s*#(?!!)")
_CONDOR_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class NodeConfig:
    """Everything an instance needs to join the pool and stop itself. No secrets."""

    annex_id: str
    annex_name: str
    condor_owner: str
    central_manager: str
    pool_token_secret_arn: str
    secrets_endpoint: str
    heartbeat_url: str
    lease_expires_at: datetime
    idle_timeout: timedelta
    deadman_margin: timedelta
    config_timeout: timedelta

    @classmethod
    def for_annex(cls, annex: Annex, settings: LaunchSettings) -> NodeConfig:
        return cls(
            annex_id=annex.id,
            annex_name=annex.name,
            condor_owner=condor_owner(annex.owner),
            central_manager=settings.central_manager,
            pool_token_secret_arn=settings.pool_token_secret_arn,
            secrets_endpoint=settings.secrets_endpoint,
            heartbeat_url=settings.heartbeat_url,
            lease_expires_at=annex.lease_expires_at,
            idle_timeout=annex.idle_timeout,
            deadman_margin=settings.deadman_margin,
            config_timeout=settings.config_timeout,
        )


def condor_owner(owner_arn: str) -> str:
    """The HTCondor user whose jobs an annex runs: the last part of the requester's IAM ARN
    (user/alice -> alice, assumed-role/Researchers/alice -> alice). Empty when that is not a plausible
    user name; the annex then runs only jobs that target it by name."""
    name = owner_arn.rsplit("/", 1)[-1] if "/" in owner_arn else ""
    return name if _CONDOR_USER.match(name) else ""


@cache
def _template(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def heartbeat_agent() -> str:
    return _template("annex-heartbeat.sh")


def _without_comments(script: str) -> str:
    """The script without its comment lines (the shebang stays): they count against the user data limit."""
    return "".join(line for line in script.splitlines(keepends=True) if not _COMMENT.match(line))


def render_user_data(config: NodeConfig) -> str:
    """The boot script for one annex. Raises ValueError if the template and the values disagree."""
    agent = _without_comments(heartbeat_agent()).rstrip("\n")
    if any(line.strip() == AGENT_DELIMITER for line in agent.splitlines()):
        raise ValueError(f"the heartbeat agent must not contain a line '{AGENT_DELIMITER}'")
    values = {
        "ANNEX_ID": config.annex_id,
        "ANNEX_NAME": config.annex_name,
        "CONDOR_OWNER": config.condor_owner,
        "CENTRAL_MANAGER": config.central_manager,
        "POOL_TOKEN_SECRET_ARN": config.pool_token_secret_arn,
        "SECRETS_ENDPOINT": config.secrets_endpoint,
        "HEARTBEAT_URL": config.heartbeat_url,
        "LEASE_EXPIRES_EPOCH": str(to_epoch(config.lease_expires_at)),
        "IDLE_TIMEOUT_SECONDS": str(int(config.idle_timeout.total_seconds())),
        "DEADMAN_MARGIN_SECONDS": str(int(config.deadman_margin.total_seconds())),
        "CONFIG_TIMEOUT_SECONDS": str(int(config.config_timeout.total_seconds())),
    }
    template = _template("annex-node.sh")
    wanted = set(_PLACEHOLDER.findall(template))
    if wanted != {*values, "HEARTBEAT_AGENT"}:
        raise ValueError(f"user data template placeholders {sorted(wanted)} do not match the values given")

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        return agent if key == "HEARTBEAT_AGENT" else shlex.quote(values[key])

    script = _PLACEHOLDER.sub(fill, template)
    size = len(script.encode())
    if size > USER_DATA_LIMIT:
        raise ValueError(f"user data is {size} bytes; EC2 accepts at most {USER_DATA_LIMIT}")
    return script
