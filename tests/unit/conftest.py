"""The unit tier: no network at all."""

from __future__ import annotations

# Two libraries create a socket when first imported, without sending anything: the X-Ray SDK its UDP
# emitter (Powertools' Tracer imports it at handler import time; tracing is disabled in tests) and
# urllib3 its IPv6 probe. Importing them here, before sockets are blocked, keeps those inert sockets out
# of the way.
import aws_xray_sdk.core  # noqa: F401
import urllib3  # noqa: F401
from pytest_socket import disable_socket


def pytest_runtest_setup() -> None:
    disable_socket(allow_unix_socket=False)
