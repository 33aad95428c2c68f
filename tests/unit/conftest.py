"""The unit tier: no network at all."""

from __future__ import annotations

# The X-Ray SDK creates its UDP emitter socket when first imported (Powertools' Tracer imports it at
# handler import time). Creating it here, before sockets are blocked, keeps that one inert socket out of
# the way; tracing is disabled in tests, so nothing is ever sent on it.
import aws_xray_sdk.core  # noqa: F401
from pytest_socket import disable_socket


def pytest_runtest_setup() -> None:
    disable_socket(allow_unix_socket=False)
