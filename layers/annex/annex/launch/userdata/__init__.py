"""User data for annex instances: the boot script (annex-node.sh) with the heartbeat agent
(annex-heartbeat.sh) inside, rendered per annex. The pool token is never an input: only its SSM
parameter's name is, and the instance reads the token itself at boot.

Every value is checked here, whatever validated it upstream, because the boot script writes most of
them into the HTCondor configuration: a value that could end a line, close a quoted string or expand
a macro would let it rewrite the job policy (`START = True`). Such a value is refused with a
ValueError; the accepted ones are shell-quoted as well."""

from __future__ import annotations

import base64
import gzip
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
PAYLOAD_DELIMITER = "ANNEX_BOOT_PAYLOAD"
BOOT_SCRIPT_PATH = "/run/annex-boot.sh"
MAX_SHARE_WITH = 20
_PLACEHOLDER = re.compile(r"@@([A-Z_]+)@@")
_COMMENT = re.compile(r"^\s*#(?!!)")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SAFE = {
    "annex_id": re.compile(r"^ax-[0-9a-f]{16}$"),
    "annex_name": re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"),
    "condor_user": re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$"),
    "central_manager": re.compile(rf"^{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?$"),
    # SSM's parameter name characters (a-z, A-Z, 0-9, _ . - and the path's /): it goes into a JSON body.
    "pool_token_parameter": re.compile(r"^/[A-Za-z0-9_.\-/]{1,1010}$"),
    "ssm_endpoint": re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?/?$"),
    "heartbeat_url": re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?/[A-Za-z0-9._/-]*$"),
}


@dataclass(frozen=True)
class NodeConfig:
    """Everything an instance needs to join the pool, run its owner's jobs and stop itself. No secrets."""

    annex_id: str
    annex_name: str
    condor_user: str
    central_manager: str
    pool_token_parameter: str
    ssm_endpoint: str
    heartbeat_url: str
    lease_expires_at: datetime
    idle_timeout: timedelta
    deadman_margin: timedelta
    config_timeout: timedelta
    drain_lead: timedelta
    share_with: tuple[str, ...] = ()
    all_my_jobs: bool = False
    use_ccb: bool = True

    @classmethod
    def for_annex(cls, annex: Annex, settings: LaunchSettings) -> NodeConfig:
        user = annex.condor_user or condor_owner(annex.owner)
        return cls(
            annex_id=annex.id,
            annex_name=annex.name,
            condor_user=user,
            central_manager=settings.central_manager,
            pool_token_parameter=settings.pool_token_parameter,
            ssm_endpoint=settings.ssm_endpoint,
            heartbeat_url=settings.heartbeat_url,
            lease_expires_at=annex.lease_expires_at,
            idle_timeout=annex.idle_timeout,
            deadman_margin=settings.deadman_margin,
            config_timeout=settings.config_timeout,
            drain_lead=settings.drain_lead,
            share_with=tuple(annex.share_with),
            all_my_jobs=annex.all_my_jobs,
            use_ccb=settings.use_ccb,
        )

    @property
    def condor_host(self) -> str:
        """CONDOR_HOST: the central manager's host name alone (it feeds host-based ALLOW lists)."""
        return self.central_manager.split(":", 1)[0]

    @property
    def collector_host(self) -> str:
        """COLLECTOR_HOST: host[:port], as the administrator gave it."""
        return self.central_manager


def condor_owner(owner_arn: str) -> str:
    """For annex records written before condor_user existed: the last part of the owner's IAM ARN when
    it is a login name (user/alice -> alice); empty otherwise, which the renderer refuses."""
    name = owner_arn.rsplit("/", 1)[-1] if "/" in owner_arn else ""
    return name if _SAFE["condor_user"].match(name) else ""


def _seconds(name: str, value: timedelta, *, minimum: int = 0) -> str:
    seconds = int(value.total_seconds())
    if seconds < minimum or seconds != value.total_seconds():
        raise ValueError(f"{name} must be a whole number of seconds, at least {minimum}")
    return str(seconds)


def node_values(config: NodeConfig) -> dict[str, str]:
    """The placeholders of annex-node.sh, each checked against what may safely appear in a shell
    assignment and in an HTCondor configuration line. Raises ValueError naming the first bad field."""
    for name, pattern in _SAFE.items():
        value = getattr(config, name)
        if not isinstance(value, str) or not pattern.match(value):
            raise ValueError(
                f"{name} {value!r:.80} is not safe for the boot script and HTCondor configuration"
            )
    port = config.central_manager.partition(":")[2]
    if port and not 0 < int(port) < 65536:
        raise ValueError(f"central_manager port {port} is out of range")
    if len(config.share_with) > MAX_SHARE_WITH or len(set(config.share_with)) != len(config.share_with):
        raise ValueError(f"share_with must list at most {MAX_SHARE_WITH} distinct users")
    for user in config.share_with:
        if not isinstance(user, str) or not _SAFE["condor_user"].match(user) or user == config.condor_user:
            raise ValueError(f"share_with entry {user!r:.40} is not another HTCondor user name")
    for name in ("all_my_jobs", "use_ccb"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be a boolean")
    lease = to_epoch(config.lease_expires_at)
    if lease <= 0:
        raise ValueError("lease_expires_at must be after 1970")
    return {
        "ANNEX_ID": config.annex_id,
        "ANNEX_NAME": config.annex_name,
        "CONDOR_USER": config.condor_user,
        "SHARE_WITH": ",".join(config.share_with),
        "ALL_MY_JOBS": "true" if config.all_my_jobs else "false",
        "CONDOR_HOST": config.condor_host,
        "COLLECTOR_HOST": config.collector_host,
        "USE_CCB": "true" if config.use_ccb else "false",
        "POOL_TOKEN_PARAMETER": config.pool_token_parameter,
        "SSM_ENDPOINT": config.ssm_endpoint,
        "HEARTBEAT_URL": config.heartbeat_url,
        "LEASE_EXPIRES_EPOCH": str(lease),
        "DRAIN_LEAD_SECONDS": _seconds("drain_lead", config.drain_lead),
        "IDLE_TIMEOUT_SECONDS": _seconds("idle_timeout", config.idle_timeout, minimum=1),
        "DEADMAN_MARGIN_SECONDS": _seconds("deadman_margin", config.deadman_margin),
        "CONFIG_TIMEOUT_SECONDS": _seconds("config_timeout", config.config_timeout, minimum=1),
    }


@cache
def _template(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def heartbeat_agent() -> str:
    return _template("annex-heartbeat.sh")


def boot_script_source() -> str:
    """annex-node.sh as committed (with its comments)."""
    return _template("annex-node.sh")


def _without_comments(script: str) -> str:
    """The boot script without comment-only lines (the shebang stays): they document the source and
    would cost a third of EC2's 16 KiB. Heredoc bodies in it hold no '#' lines that matter."""
    return "".join(line for line in script.splitlines(keepends=True) if not _COMMENT.match(line))


def render_boot_script(config: NodeConfig) -> str:
    """The boot script for one annex, as the instance runs it. Raises ValueError if a value is unsafe,
    or if the template and the values disagree."""
    values = node_values(config)
    agent = heartbeat_agent().rstrip("\n")
    if any(line.strip() == AGENT_DELIMITER for line in agent.splitlines()):
        raise ValueError(f"the heartbeat agent must not contain a line '{AGENT_DELIMITER}'")
    template = _without_comments(boot_script_source())
    wanted = set(_PLACEHOLDER.findall(template))
    if wanted != {*values, "HEARTBEAT_AGENT"}:
        raise ValueError(f"user data template placeholders {sorted(wanted)} do not match the values given")

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        return agent if key == "HEARTBEAT_AGENT" else shlex.quote(values[key])

    return _PLACEHOLDER.sub(fill, template)


def render_user_data(config: NodeConfig) -> str:
    """The user data for one annex: a short script carrying the boot script gzip-compressed (the whole
    would not fit EC2's 16 KiB). It writes the boot script to a root-only file and runs it; if it
    cannot, it powers the instance off. unpack_user_data() gives the boot script back."""
    script = render_boot_script(config)
    payload = base64.encodebytes(gzip.compress(script.encode(), mtime=0)).decode()
    user_data = (
        "#!/bin/bash\n"
        f"# Annex node bootstrap for annex {config.annex_id}; the boot script is gzip+base64 below.\n"
        "set -euo pipefail\n"
        "umask 077\n"
        f"{{ base64 -d | gunzip >{BOOT_SCRIPT_PATH}; }} <<'{PAYLOAD_DELIMITER}' ||\n"
        "  { systemctl poweroff --no-wall || shutdown -P now; exit 1; }\n"
        f"{payload}{PAYLOAD_DELIMITER}\n"
        f"exec /bin/bash {BOOT_SCRIPT_PATH}\n"
    )
    size = len(user_data.encode())
    if size > USER_DATA_LIMIT:
        raise ValueError(f"user data is {size} bytes; EC2 accepts at most {USER_DATA_LIMIT}")
    return user_data


def unpack_user_data(user_data: str) -> str:
    """The boot script inside rendered user data (for tests and for an administrator reading it)."""
    _, sep, rest = user_data.partition(f"<<'{PAYLOAD_DELIMITER}' ||\n")
    if not sep:
        raise ValueError("not Annex user data")
    payload = rest.split("\n", 1)[1].split(f"{PAYLOAD_DELIMITER}\n", 1)[0]
    return gzip.decompress(base64.b64decode(payload)).decode()
