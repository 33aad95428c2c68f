"""Where the client sends requests, and as whom.

Precedence (first wins):
- endpoint: `--endpoint`, then `ANNEX_ENDPOINT`, then the config file's `endpoint`.
- profile:  `--profile`, then `AWS_PROFILE` (botocore reads it), then the config file's `profile`.
- region:   `--region`, then the region in an execute-api endpoint host, then the config file's `region`,
            then `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the AWS profile's `region`.

The config file is INI (`[annex]` section), at `$ANNEX_CONFIG_FILE`, else `$XDG_CONFIG_HOME/annex/config`,
else `~/.config/annex/config`. `annex-client configure` writes it. AWS_ENDPOINT_URL is deliberately not
read: it points AWS SDKs at AWS services, and Annex is not one.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from annex_client.errors import ConfigError, UsageError

ENDPOINT_ENV = "ANNEX_ENDPOINT"
CONFIG_FILE_ENV = "ANNEX_CONFIG_FILE"
SECTION = "annex"
KEYS = ("endpoint", "region", "profile")
_EXECUTE_API_HOST = re.compile(
    r"\.execute-api\.([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:vpce\.)?amazonaws\.com(?:\.cn)?$"
)


def config_path(environ: Mapping[str, str]) -> Path:
    if environ.get(CONFIG_FILE_ENV):
        return Path(environ[CONFIG_FILE_ENV]).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "annex" / "config"


def read_config(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read {path}: {exc}; fix it or write it again with 'annex-client configure'"
        ) from None
    if not parser.has_section(SECTION):
        return {}
    return {k: v.strip() for k, v in parser.items(SECTION) if k in KEYS and v.strip()}


def write_config(path: Path, values: Mapping[str, str]) -> None:
    """Write the [annex] section atomically (other sections, if any, are kept)."""
    parser = configparser.ConfigParser(interpolation=None)
    if path.exists():
        parser.read(path, encoding="utf-8")
    if not parser.has_section(SECTION):
        parser.add_section(SECTION)
    for key, value in values.items():
        if value:
            parser.set(SECTION, key, value)
        elif parser.has_option(SECTION, key):
            parser.remove_option(SECTION, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=".config.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            parser.write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str) -> str:
    """The base URL without a trailing slash. https is required except on this machine (local stack)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UsageError(
            f"'{url}' is not an endpoint URL; it looks like "
            "https://abc123.execute-api.us-east-1.amazonaws.com/v1"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise UsageError(f"'{url}' uses plain http; use https (http is accepted only for this machine)")
    if parts.query or parts.fragment:
        raise UsageError(f"'{url}' has a query or fragment; give the API base URL, such as .../v1")
    return url.strip().rstrip("/")


def region_from_endpoint(url: str) -> str | None:
    match = _EXECUTE_API_HOST.search(urlsplit(url).hostname or "")
    return match.group(1) if match else None


@dataclass(frozen=True)
class Settings:
    """What the flags, the environment and the config file decided, and where each value came from."""

    endpoint: str | None
    endpoint_source: str
    profile: str | None
    profile_source: str
    region: str | None
    region_source: str
    config_file: Path


def resolve(
    *,
    endpoint: str | None,
    profile: str | None,
    region: str | None,
    environ: Mapping[str, str],
) -> Settings:
    path = config_path(environ)
    stored = read_config(path)

    if endpoint:
        url, url_source = endpoint, "--endpoint"
    elif environ.get(ENDPOINT_ENV):
        url, url_source = environ[ENDPOINT_ENV], ENDPOINT_ENV
    elif stored.get("endpoint"):
        url, url_source = stored["endpoint"], str(path)
    else:
        url, url_source = None, "not set"
    if url is not None:
        try:
            url = check_endpoint(url)
        except UsageError as exc:
            if url_source == "--endpoint":
                raise
            raise ConfigError(f"{exc.message} (from {url_source})", code="BadEndpoint") from None

    if profile:
        prof, prof_source = profile, "--profile"
    elif environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE"):
        prof, prof_source = None, "AWS_PROFILE"  # botocore reads it itself
    elif stored.get("profile"):
        prof, prof_source = stored["profile"], str(path)
    else:
        prof, prof_source = None, "default"

    host_region = region_from_endpoint(url) if url else None
    if region:
        reg, reg_source = region, "--region"
    elif host_region:
        reg, reg_source = host_region, "the endpoint host"
    elif stored.get("region"):
        reg, reg_source = stored["region"], str(path)
    elif environ.get("AWS_REGION"):
        reg, reg_source = environ["AWS_REGION"], "AWS_REGION"
    elif environ.get("AWS_DEFAULT_REGION"):
        reg, reg_source = environ["AWS_DEFAULT_REGION"], "AWS_DEFAULT_REGION"
    else:
        reg, reg_source = None, "the AWS profile"  # botocore reads it when signing
    return Settings(url, url_source, prof, prof_source, reg, reg_source, path)


def require_endpoint(settings: Settings) -> str:
    if not settings.endpoint:
        raise ConfigError(
            "no Annex endpoint is configured; run 'annex-client configure --endpoint URL' with the "
            f"ApiUrl your pool administrator gave you, or set {ENDPOINT_ENV}",
            code="NoEndpoint",
        )
    return settings.endpoint
