"""Expected failures and their exit codes. `cli.main` turns each into one line (and, with --json, the
same error shape as the API's) and its exit code, never a traceback.

This module is imported by `annex-client --help` (the exit codes are in the help text), so it stays tiny.
"""

from __future__ import annotations

from typing import Any

OK = 0
REFUSED = 1
USAGE = 2
CONFIG = 3
UNREACHABLE = 4
TIMED_OUT = 5
SERVICE_FAILED = 6
INTERRUPTED = 130

# (code, meaning): the one list behind `annex-client --help` and docs/client.md.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (OK, "success"),
    (REFUSED, "not done: the API refused (4xx), you answered no, or check-setup found a problem"),
    (USAGE, "usage: bad arguments, or confirmation needed without a terminal (pass --yes)"),
    (CONFIG, "configuration or credentials: no endpoint, AWS credentials missing/expired/rejected (403)"),
    (UNREACHABLE, "the endpoint could not be reached (DNS, connection, TLS, network timeout)"),
    (TIMED_OUT, "--wait gave up after --timeout (the annex keeps its lease)"),
    (SERVICE_FAILED, "the service failed (HTTP 5xx, or throttled after retries); try again later"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
)


class ClientFailure(Exception):
    """Base of every expected failure: a message that says what to do, and an exit code."""

    exit_code = REFUSED
    code = "ClientFailure"
    json_emitted = False  # True when the command already printed its JSON report

    def __init__(self, message: str, *, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or []

    def body(self) -> dict[str, Any]:
        """The error in the API's own shape, for --json."""
        return {"error": self.code, "message": self.message, "fields": self.fields}

    def line(self) -> str:
        """One line for the terminal."""
        return " ".join(self.message.split())


# The API's field names as the researcher typed them.
FIELD_FLAGS = {
    "name": "NAME",
    "count": "--count",
    "instance_type": "--type",
    "market": "--spot",
    "lease": "--lease",
    "idle_timeout": "--idle",
    "tags": "--tag",
    "client_token": "--client-token",
    "condor_user": "--condor-user",
    "share_with": "--share-with",
    "all_my_jobs": "--all-my-jobs",
    "by": "--by",
    "until": "--until",
    "reason": "--reason",
    "scope": "--all",
}


class Refused(ClientFailure):
    """The API answered 4xx with its error body: invalid input, a limit, not found, a conflict."""

    exit_code = REFUSED
    code = "Refused"

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str = "Refused",
        fields: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message, fields=fields)
        self.status = status
        self.code = code

    def line(self) -> str:
        """`--lease: the lease may be at most 24h; ...`: the field as the option that set it."""
        named = [f for f in self.fields if f.get("field")]
        if not named:
            return super().line()
        parts = []
        for f in named:
            field = str(f["field"])
            flag = FIELD_FLAGS.get(field.split(".", 1)[0], field)
            parts.append(f"{flag}: {' '.join(str(f.get('reason', '')).split())}")
        prefix = "invalid request: " if self.code == "ValidationError" else ""
        return prefix + "; ".join(parts)


class Declined(ClientFailure):
    exit_code = REFUSED
    code = "Declined"


class CheckFailed(ClientFailure):
    exit_code = REFUSED
    code = "CheckFailed"


class UsageError(ClientFailure):
    exit_code = USAGE
    code = "UsageError"


class ConfigError(ClientFailure):
    """No endpoint, no or bad credentials, or API Gateway refused the signature or the caller."""

    exit_code = CONFIG
    code = "ConfigError"

    def __init__(self, message: str, *, code: str = "ConfigError") -> None:
        super().__init__(message)
        self.code = code


class Unreachable(ClientFailure):
    exit_code = UNREACHABLE
    code = "Unreachable"


class TimedOut(ClientFailure):
    exit_code = TIMED_OUT
    code = "TimedOut"


class Interrupted(ClientFailure):
    exit_code = INTERRUPTED
    code = "Interrupted"


class ServiceFailed(ClientFailure):
    exit_code = SERVICE_FAILED
    code = "ServiceFailed"
