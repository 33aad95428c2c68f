"""The unit tier: no network at all."""

from __future__ import annotations

# urllib3 creates a socket when first imported (its IPv6 probe), without sending anything. Importing it
# here, before sockets are blocked, keeps that inert socket out of the way.
import urllib3  # noqa: F401
from pytest_socket import disable_socket


def pytest_runtest_setup() -> None:
    disable_socket(allow_unix_socket=False)
